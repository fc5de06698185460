// dsv3/tools/glob.hpp — fnmatch-style name globs ('*' any run, '?' one
// character), as `dsv3 trace --names` and the Python binding's trace(names=)
// take them.
//
// Matching keeps only the most recent '*' to fall back to: when a later
// literal fails, that star absorbs one more character and matching resumes.
// This is complete for '*'/'?' patterns (an earlier star never needs to
// absorb more than the latest one could) and runs in O(|pattern|·|name|)
// time — a pattern of many stars cannot make it exponential.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

inline bool glob_match(std::string_view pat, std::string_view s) {
  std::size_t p = 0, i = 0;
  std::size_t star = std::string_view::npos, resume = 0;
  while (i < s.size()) {
    if (p < pat.size() && (pat[p] == '?' || (pat[p] != '*' && pat[p] == s[i]))) {
      ++p, ++i;
    } else if (p < pat.size() && pat[p] == '*') {
      star = p++;
      resume = i;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      i = ++resume;
    } else {
      return false;
    }
  }
  while (p < pat.size() && pat[p] == '*') ++p;
  return p == pat.size();
}

// "a*,layers.3.*" -> {"a*", "layers.3.*"} (empty items dropped).
inline std::vector<std::string> split_globs(const std::string& list) {
  std::vector<std::string> out;
  std::size_t b = 0;
  while (b <= list.size()) {
    std::size_t e = list.find(',', b);
    if (e == std::string::npos) e = list.size();
    if (e > b) out.push_back(list.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

// True when `name` matches one of `globs`, or `globs` is empty (keep all).
inline bool matches_any(const std::vector<std::string>& globs, const std::string& name) {
  if (globs.empty()) return true;
  for (const auto& g : globs)
    if (glob_match(g, name)) return true;
  return false;
}

}  // namespace dsv3
