// dsv3/error.hpp — the one exception type dsv3 throws.
//
// Every message names the culprit (file, tensor or config field) and what was
// expected, so the CLI can print it as a single line: `dsv3: error: <what>`.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace dsv3 {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// fail("config.json: field 'n_group' = ", 3, " must divide ...") — builds the
// message from its parts and throws.
template <class... Parts>
[[noreturn]] inline void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(os.str());
}

}  // namespace dsv3
