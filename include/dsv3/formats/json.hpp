// dsv3/formats/json.hpp — every JSON input dsv3 reads goes through here.
//
// nlohmann's parser itself keeps its own stack, but copying, comparing and
// dumping a value recurse once per nesting level: a file nested a million
// levels deep (a few MB of '[') would overflow the C++ stack later, far from
// the input. So nesting is bounded before parsing: past kMaxJsonDepth levels
// the input is refused with an error naming it. No legitimate input dsv3
// reads (config.json, safetensors headers, shard indexes, trace manifests,
// variants, messages) comes near: the deepest, a chat message with tool
// calls, is under 10 levels.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

#include "../error.hpp"

namespace dsv3 {

constexpr int kMaxJsonDepth = 128;

// The deepest nesting of arrays and objects in the JSON text [first, last):
// brackets inside strings (escapes included) do not count. Text that is not
// JSON may be miscounted; the parser refuses it anyway.
template <class It>
inline int json_depth(It first, It last) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (It it = first; it != last; ++it) {
    const char c = char(*it);
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

// Parses [first, last) as JSON; `what` names the input in errors. The depth
// is checked on the text first (nlohmann's depth callback would do it while
// parsing, but its parser then walks an object's members each time one of
// them ends: quadratic in a safetensors header's tensors, seconds for a
// shard of a few thousand).
template <class It>
inline nlohmann::json parse_json(It first, It last, const std::string& what, int max_depth = kMaxJsonDepth) {
  if (json_depth(first, last) > max_depth) fail(what, ": JSON nested deeper than ", max_depth, " levels");
  try {
    return nlohmann::json::parse(first, last);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": invalid JSON: ", e.what());
  }
}

inline nlohmann::json parse_json(const std::string& text, const std::string& what, int max_depth = kMaxJsonDepth) {
  return parse_json(text.begin(), text.end(), what, max_depth);
}

}  // namespace dsv3
