// dsv3/text/chat_template.hpp - a small Jinja2 interpreter for HF chat templates.
//
// It emulates how transformers' apply_chat_template renders: a jinja2
// ImmutableSandboxedEnvironment with trim_blocks=True, lstrip_blocks=True, the
// loopcontrols extension (break/continue), `{% generation %}` blocks (rendered
// as their body), the globals raise_exception / namespace / range /
// strftime_now and HF's tojson filter (json.dumps, ensure_ascii=False). The
// variables are messages, add_generation_prompt, tools and documents (None
// unless given) plus everything in `extra` (bos_token, eos_token, ...).
//
// Supported: {{ }}, {% if/elif/else %}, {% for x in xs [if c] %} (+ else,
// tuple targets, the `loop` object), {% set x = .. %}, {% set ns.a = .. %},
// whitespace control (-, +), comments, Python-like expressions (literals,
// lists, dicts, tuples, subscripts, slices, attributes, calls, filters,
// tests, `a if c else b`, and/or/not, in/not in, comparisons, + - * / // % **
// and ~) with Python semantics for truthiness, equality and str().
// Undefined values behave like jinja2's default Undefined: printing gives '',
// `is defined` is false, iterating yields nothing, but arithmetic, attribute
// access or comparison on them is an error.
// Anything else (macros, includes, {% raw %}, unknown filters/tests/functions)
// is a dsv3::Error naming the construct and its line/column.
//
// Known differences from Python jinja2: whitespace stripping (`-`, lstrip)
// uses ASCII whitespace only; dict key order is nlohmann::json's (sorted),
// which only matters when a template iterates over or serializes a dict.
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <unordered_map>

#include "../error.hpp"
#include "jinja/interp.hpp"

namespace dsv3 {
namespace jinja {

// Parses a template once; render() may be called many times.
class Template {
 public:
  explicit Template(const std::string& source) {
    detail::Lexer lx(source);
    detail::Parser ps(lx.run());
    root_ = ps.parse();
  }
  std::string render(std::unordered_map<std::string, Value> vars) const {
    detail::Interp in(std::move(vars));
    return in.run(root_);
  }

 private:
  detail::NodeP root_;
};

}  // namespace jinja

// Renders a chat the way transformers' apply_chat_template(tokenize=False)
// does. `messages` must be a JSON array of objects, each with a string
// "role" (other checks, e.g. on "content", are the template's business: a
// `'<｜User｜>' + content` with a non-string content is an error, as it is in
// Python). Roles the template does not handle render nothing, as with HF.
// `extra` (an object or null) supplies the other template variables
// (bos_token, eos_token, tools, ...).
inline std::string render_chat(const std::string& tmpl, const nlohmann::json& messages, bool add_generation_prompt,
                               const nlohmann::json& extra = nlohmann::json::object()) {
  if (!messages.is_array()) throw Error("render_chat: 'messages' must be a JSON array of message objects");
  for (size_t i = 0; i < messages.size(); ++i) {
    const auto& m = messages[i];
    std::string w = "render_chat: messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw Error(w + " must be a JSON object, got " + std::string(m.type_name()));
    auto r = m.find("role");
    if (r == m.end() || !r->is_string()) throw Error(w + " must have a string 'role'");
  }
  if (!extra.is_null() && !extra.is_object()) throw Error("render_chat: 'extra' must be a JSON object");
  std::unordered_map<std::string, jinja::Value> vars;
  vars["tools"] = jinja::Value::none();
  vars["documents"] = jinja::Value::none();
  if (extra.is_object())
    for (auto it = extra.begin(); it != extra.end(); ++it) vars[it.key()] = jinja::from_json(it.value());
  vars["messages"] = jinja::from_json(messages);
  vars["add_generation_prompt"] = jinja::Value::boolean(add_generation_prompt);
  return jinja::Template(tmpl).render(std::move(vars));
}

}  // namespace dsv3

