// dsv3/formats/json.hpp — every JSON input dsv3 reads goes through here.
//
// nlohmann's parser itself keeps its own stack, but copying, comparing and
// dumping a value recurse once per nesting level: a file nested a million
// levels deep (a few MB of '[') would overflow the C++ stack later, far from
// the input. So nesting is bounded while parsing: past kMaxJsonDepth levels
// the input is refused with an error naming it. No legitimate input dsv3
// reads (config.json, safetensors headers, shard indexes, trace manifests,
// variants, messages) comes near: the deepest, a chat message with tool
// calls, is under 10 levels.
#pragma once

#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

#include "../error.hpp"

namespace dsv3 {

constexpr int kMaxJsonDepth = 128;

// Parses [first, last) as JSON; `what` names the input in errors.
template <class It>
inline nlohmann::json parse_json(It first, It last, const std::string& what, int max_depth = kMaxJsonDepth) {
  // nlohmann calls an array or object start with the number of containers
  // already open around it: the max_depth-th level opens at max_depth - 1.
  auto bound = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json&) {
    const bool opens = event == nlohmann::json::parse_event_t::array_start ||
                       event == nlohmann::json::parse_event_t::object_start;
    if (opens && depth >= max_depth) fail(what, ": JSON nested deeper than ", max_depth, " levels");
    return true;
  };
  try {
    return nlohmann::json::parse(first, last, bound);
  } catch (const nlohmann::json::exception& e) {
    fail(what, ": invalid JSON: ", e.what());
  }
}

inline nlohmann::json parse_json(const std::string& text, const std::string& what, int max_depth = kMaxJsonDepth) {
  return parse_json(text.begin(), text.end(), what, max_depth);
}

}  // namespace dsv3
