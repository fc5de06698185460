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

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../error.hpp"

namespace dsv3 {
namespace jinja {

struct Value;
struct Dict;
using List = std::vector<Value>;

struct Value {
  enum class K { Undefined, None, Bool, Int, Float, Str, List, Dict, Ns, Func };
  K k = K::Undefined;
  bool b = false;
  int64_t i = 0;
  double f = 0;
  std::string s;  // Str: the string; Undefined: why it is undefined; Func: name
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;  // Dict and Ns
  bool tuple = false;          // List created by a tuple literal (prints as (a, b))

  static Value undefined(std::string why) { Value v; v.s = std::move(why); return v; }
  static Value none() { Value v; v.k = K::None; return v; }
  static Value boolean(bool x) { Value v; v.k = K::Bool; v.b = x; return v; }
  static Value integer(int64_t x) { Value v; v.k = K::Int; v.i = x; return v; }
  static Value flt(double x) { Value v; v.k = K::Float; v.f = x; return v; }
  static Value str(std::string x) { Value v; v.k = K::Str; v.s = std::move(x); return v; }
  static Value func(std::string name) { Value v; v.k = K::Func; v.s = std::move(name); return v; }
  static Value make_list(List l = {}) { Value v; v.k = K::List; v.list = std::make_shared<List>(std::move(l)); return v; }
  static Value make_dict();
  static Value make_ns();
  bool is_undef() const { return k == K::Undefined; }
  bool is_num() const { return k == K::Bool || k == K::Int || k == K::Float; }
  double as_double() const { return k == K::Float ? f : k == K::Bool ? double(b) : double(i); }
  int64_t as_int() const { return k == K::Bool ? int64_t(b) : i; }
};

struct Dict {
  std::vector<std::pair<std::string, Value>> items;
  const Value* find(const std::string& key) const {
    for (const auto& kv : items) if (kv.first == key) return &kv.second;
    return nullptr;
  }
  void set(const std::string& key, Value v) {
    for (auto& kv : items) if (kv.first == key) { kv.second = std::move(v); return; }
    items.emplace_back(key, std::move(v));
  }
};
inline Value Value::make_dict() { Value v; v.k = K::Dict; v.dict = std::make_shared<Dict>(); return v; }
inline Value Value::make_ns() { Value v; v.k = K::Ns; v.dict = std::make_shared<Dict>(); return v; }

inline Value from_json(const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::boolean(j.get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::integer(j.get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: return Value::integer(int64_t(j.get<uint64_t>()));
    case nlohmann::json::value_t::number_float: return Value::flt(j.get<double>());
    case nlohmann::json::value_t::string: return Value::str(j.get<std::string>());
    case nlohmann::json::value_t::array: {
      Value v = Value::make_list();
      for (const auto& e : j) v.list->push_back(from_json(e));
      return v;
    }
    case nlohmann::json::value_t::object: {
      Value v = Value::make_dict();
      for (auto it = j.begin(); it != j.end(); ++it) v.dict->items.emplace_back(it.key(), from_json(it.value()));
      return v;
    }
    default: return Value::undefined("unsupported JSON value");
  }
}

namespace detail {

struct Pos { int line = 1, col = 1; };

constexpr int64_t kMaxRange = 100000;          // jinja2's sandbox MAX_RANGE: range() longer than this is an error
constexpr int64_t kMaxRepeat = int64_t(1) << 20;  // longest string (bytes) / list (items) made by '*' (hostile templates)

[[noreturn]] inline void fail(const Pos& p, const std::string& msg) {
  throw Error("chat template: " + msg + " (line " + std::to_string(p.line) + ", column " +
                           std::to_string(p.col) + ")");
}

inline const char* type_name(const Value& v) {
  switch (v.k) {
    case Value::K::Undefined: return "Undefined";
    case Value::K::None: return "NoneType";
    case Value::K::Bool: return "bool";
    case Value::K::Int: return "int";
    case Value::K::Float: return "float";
    case Value::K::Str: return "str";
    case Value::K::List: return "list";
    case Value::K::Dict: return "dict";
    case Value::K::Ns: return "Namespace";
    case Value::K::Func: return "function";
  }
  return "?";
}

// ------------------------------------------------------------ Python-like text
inline std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x < 0 ? "-inf" : "inf";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buf[64];
  int prec = 1;
  for (; prec <= 17; ++prec) {  // shortest round-tripping digits
    std::snprintf(buf, sizeof buf, "%.*e", prec - 1, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  std::string e(buf);
  size_t epos = e.find('e');
  std::string mant = e.substr(0, epos);
  int exp = std::stoi(e.substr(epos + 1));
  bool neg = mant[0] == '-';
  if (neg) mant.erase(0, 1);
  std::string digits;
  for (char c : mant) if (c != '.') digits += c;
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out;
  if (exp >= -5 && exp < 16) {
    if (exp < 0) {
      out = "0." + std::string(size_t(-exp - 1), '0') + digits;
    } else if (size_t(exp) + 1 >= digits.size()) {
      out = digits + std::string(size_t(exp) + 1 - digits.size(), '0') + ".0";
    } else {
      out = digits.substr(0, size_t(exp) + 1) + "." + digits.substr(size_t(exp) + 1);
    }
    if (exp == -5) {  // Python switches to exponent form below 1e-4
      out.clear();
    }
  }
  if (out.empty()) {
    out = digits.substr(0, 1);
    if (digits.size() > 1) out += "." + digits.substr(1);
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return neg ? "-" + out : out;
}

inline std::string py_repr_str(const std::string& s) {
  bool has_sq = s.find('\'') != std::string::npos, has_dq = s.find('"') != std::string::npos;
  char q = (has_sq && !has_dq) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == (unsigned char)q) { out += '\\'; out += char(c); }
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) { char b[8]; std::snprintf(b, sizeof b, "\\x%02x", c); out += b; }
    else out += char(c);
  }
  out += q;
  return out;
}

std::string py_str(const Value& v);
inline std::string py_repr(const Value& v) {
  if (v.k == Value::K::Str) return py_repr_str(v.s);
  return py_str(v);
}
inline std::string py_str(const Value& v) {
  switch (v.k) {
    case Value::K::Undefined: return "";
    case Value::K::None: return "None";
    case Value::K::Bool: return v.b ? "True" : "False";
    case Value::K::Int: return std::to_string(v.i);
    case Value::K::Float: return float_repr(v.f);
    case Value::K::Str: return v.s;
    case Value::K::List: {
      std::string o = v.tuple ? "(" : "[";
      for (size_t i = 0; i < v.list->size(); ++i) o += (i ? ", " : "") + py_repr((*v.list)[i]);
      if (v.tuple && v.list->size() == 1) o += ",";
      return o + (v.tuple ? ")" : "]");
    }
    case Value::K::Dict: case Value::K::Ns: {
      std::string o = v.k == Value::K::Ns ? "<Namespace {" : "{";
      bool first = true;
      for (const auto& kv : v.dict->items) {
        o += (first ? "" : ", ") + py_repr_str(kv.first) + ": " + py_repr(kv.second);
        first = false;
      }
      return o + (v.k == Value::K::Ns ? "}>" : "}");
    }
    case Value::K::Func: return "<built-in function " + v.s + ">";
  }
  return "";
}

// Python json.dumps(x, ensure_ascii=False, indent=indent) (HF's tojson).
inline void json_dump(const Value& v, std::string& o, int indent, int level, const Pos& p) {
  auto nl = [&](int lv) {
    if (indent >= 0) { o += '\n'; o += std::string(size_t(indent * lv), ' '); }
  };
  const char* sep = indent >= 0 ? "," : ", ";
  switch (v.k) {
    case Value::K::None: o += "null"; return;
    case Value::K::Bool: o += v.b ? "true" : "false"; return;
    case Value::K::Int: o += std::to_string(v.i); return;
    case Value::K::Float:
      if (std::isnan(v.f)) o += "NaN";
      else if (std::isinf(v.f)) o += v.f < 0 ? "-Infinity" : "Infinity";
      else o += float_repr(v.f);
      return;
    case Value::K::Str: {
      o += '"';
      for (unsigned char c : v.s) {
        switch (c) {
          case '"': o += "\\\""; break;
          case '\\': o += "\\\\"; break;
          case '\n': o += "\\n"; break;
          case '\r': o += "\\r"; break;
          case '\t': o += "\\t"; break;
          case '\b': o += "\\b"; break;
          case '\f': o += "\\f"; break;
          default:
            if (c < 0x20) { char b[8]; std::snprintf(b, sizeof b, "\\u%04x", c); o += b; }
            else o += char(c);
        }
      }
      o += '"';
      return;
    }
    case Value::K::List: {
      if (v.list->empty()) { o += "[]"; return; }
      o += '[';
      for (size_t i = 0; i < v.list->size(); ++i) {
        if (i) o += sep;
        nl(level + 1);
        json_dump((*v.list)[i], o, indent, level + 1, p);
      }
      nl(level);
      o += ']';
      return;
    }
    case Value::K::Dict: case Value::K::Ns: {
      if (v.dict->items.empty()) { o += "{}"; return; }
      o += '{';
      bool first = true;
      for (const auto& kv : v.dict->items) {
        if (!first) o += sep;
        first = false;
        nl(level + 1);
        json_dump(Value::str(kv.first), o, indent, level + 1, p);
        o += ": ";
        json_dump(kv.second, o, indent, level + 1, p);
      }
      nl(level);
      o += '}';
      return;
    }
    default: fail(p, std::string("tojson: object of type '") + type_name(v) + "' is not JSON serializable");
  }
}

inline bool truthy(const Value& v) {
  switch (v.k) {
    case Value::K::Undefined: case Value::K::None: return false;
    case Value::K::Bool: return v.b;
    case Value::K::Int: return v.i != 0;
    case Value::K::Float: return v.f != 0;
    case Value::K::Str: return !v.s.empty();
    case Value::K::List: return !v.list->empty();
    case Value::K::Dict: return !v.dict->items.empty();
    default: return true;
  }
}

inline bool equal(const Value& a, const Value& b) {
  if (a.is_num() && b.is_num()) {
    if (a.k == Value::K::Float || b.k == Value::K::Float) return a.as_double() == b.as_double();
    return a.as_int() == b.as_int();
  }
  if (a.k != b.k) return false;
  switch (a.k) {
    case Value::K::Undefined: case Value::K::None: return true;
    case Value::K::Str: return a.s == b.s;
    case Value::K::List:
      if (a.list->size() != b.list->size()) return false;
      for (size_t i = 0; i < a.list->size(); ++i) if (!equal((*a.list)[i], (*b.list)[i])) return false;
      return true;
    case Value::K::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      for (const auto& kv : a.dict->items) {
        const Value* o = b.dict->find(kv.first);
        if (!o || !equal(kv.second, *o)) return false;
      }
      return true;
    }
    case Value::K::Ns: return a.dict == b.dict;
    case Value::K::Func: return a.s == b.s;
    default: return false;
  }
}

// UTF-8 code points of s (for len(), indexing and slicing strings).
inline std::vector<std::string> code_points(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    out.push_back(s.substr(i, len));
    i += len;
  }
  return out;
}

// ------------------------------------------------------------------- lexing
struct Tok {
  enum T { Name, Str, Int, Float, Op, End } t = End;
  std::string s;
  int64_t i = 0;
  double f = 0;
  Pos p;
};

struct Chunk {  // template-level piece
  enum T { Text, Var, Block } t;
  std::string text;        // Text
  std::vector<Tok> toks;   // Var/Block expression tokens (ends with End)
  Pos p;
};

inline bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

class Lexer {
 public:
  explicit Lexer(std::string src) : s_(std::move(src)) {
    // jinja2: newlines normalized to \n, one trailing newline dropped.
    std::string n;
    n.reserve(s_.size());
    for (size_t i = 0; i < s_.size(); ++i) {
      if (s_[i] == '\r') { n += '\n'; if (i + 1 < s_.size() && s_[i + 1] == '\n') ++i; }
      else n += s_[i];
    }
    if (!n.empty() && n.back() == '\n') n.pop_back();
    s_ = std::move(n);
  }

  std::vector<Chunk> run() {
    std::vector<Chunk> out;
    size_t i = 0;
    bool line_starting = true;
    while (i < s_.size()) {
      size_t j = i;
      while (true) {
        j = s_.find('{', j);
        if (j == std::string::npos || j + 1 >= s_.size()) { j = std::string::npos; break; }
        char c = s_[j + 1];
        if (c == '{' || c == '%' || c == '#') break;
        ++j;
      }
      if (j == std::string::npos) {
        out.push_back({Chunk::Text, s_.substr(i), {}, pos(i)});
        break;
      }
      std::string data = s_.substr(i, j - i);
      char kind = s_[j + 1];
      char sign = (j + 2 < s_.size() && (s_[j + 2] == '-' || s_[j + 2] == '+')) ? s_[j + 2] : 0;
      if (sign == '-') {
        while (!data.empty() && is_ws(data.back())) data.pop_back();
      } else if (kind != '{' && sign != '+') {  // lstrip_blocks
        size_t l = data.rfind('\n');
        l = (l == std::string::npos) ? 0 : l + 1;
        if (l > 0 || line_starting) {
          bool all_ws = l < data.size();
          for (size_t k = l; k < data.size(); ++k) if (!is_ws(data[k])) { all_ws = false; break; }
          if (all_ws) data.resize(l);
        }
      }
      if (!data.empty()) out.push_back({Chunk::Text, data, {}, pos(i)});
      Pos tp = pos(j);
      size_t k = j + 2 + (sign ? 1 : 0);
      char end_sign = 0;
      if (kind == '#') {
        size_t e = s_.find("#}", k);
        if (e == std::string::npos) fail(tp, "unterminated comment");
        if (e > k && (s_[e - 1] == '-' || s_[e - 1] == '+')) end_sign = s_[e - 1];
        k = e + 2;
      } else {
        Chunk c{kind == '{' ? Chunk::Var : Chunk::Block, {}, {}, tp};
        k = lex_tag(k, kind == '{' ? '}' : '%', c.toks, end_sign, tp);
        if (c.t == Chunk::Block && c.toks.size() >= 2 && c.toks[0].t == Tok::Name &&
            (c.toks[0].s == "raw" || c.toks[0].s == "endraw"))
          fail(tp, "unsupported statement '" + c.toks[0].s + "'");
        out.push_back(std::move(c));
      }
      size_t after = k;
      if (end_sign == '-') {
        while (k < s_.size() && is_ws(s_[k])) ++k;
      } else if (kind != '{' && end_sign != '+' && k < s_.size() && s_[k] == '\n') {
        ++k;  // trim_blocks
      }
      line_starting = (k > after) ? s_[k - 1] == '\n' : false;
      i = k;
    }
    return out;
  }

 private:
  std::string s_;

  Pos pos(size_t off) const {
    Pos p;
    for (size_t i = 0; i < off && i < s_.size(); ++i) {
      if (s_[i] == '\n') { ++p.line; p.col = 1; }
      else if ((static_cast<unsigned char>(s_[i]) & 0xC0) != 0x80) ++p.col;
    }
    return p;
  }

  // Lexes expression tokens from k until the closing `}}` / `%}`. Returns the
  // offset after it; end_sign is '-' or '+' if present before the close.
  size_t lex_tag(size_t k, char close, std::vector<Tok>& toks, char& end_sign, const Pos& tp) {
    int depth = 0;
    const std::string two = std::string(1, close) + "}";
    while (true) {
      while (k < s_.size() && is_ws(s_[k])) ++k;
      if (k >= s_.size()) fail(tp, std::string("unterminated ") + (close == '}' ? "'{{'" : "'{%'"));
      if (depth == 0) {
        if (s_.compare(k, 2, two) == 0) { toks.push_back({Tok::End, "", 0, 0, pos(k)}); return k + 2; }
        if ((s_[k] == '-' || s_[k] == '+') && s_.compare(k + 1, 2, two) == 0) {
          end_sign = s_[k];
          toks.push_back({Tok::End, "", 0, 0, pos(k)});
          return k + 3;
        }
      }
      Pos p = pos(k);
      char c = s_[k];
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = k;
        while (e < s_.size() && (std::isalnum(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        toks.push_back({Tok::Name, s_.substr(k, e - k), 0, 0, p});
        k = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        size_t e = k;
        bool is_float = false;
        while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        if (e + 1 < s_.size() && s_[e] == '.' && std::isdigit(static_cast<unsigned char>(s_[e + 1]))) {
          is_float = true;
          ++e;
          while (e < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[e])) || s_[e] == '_')) ++e;
        }
        if (e < s_.size() && (s_[e] == 'e' || s_[e] == 'E')) {
          size_t x = e + 1;
          if (x < s_.size() && (s_[x] == '+' || s_[x] == '-')) ++x;
          if (x < s_.size() && std::isdigit(static_cast<unsigned char>(s_[x]))) {
            is_float = true;
            e = x;
            while (e < s_.size() && std::isdigit(static_cast<unsigned char>(s_[e]))) ++e;
          }
        }
        std::string num;
        for (size_t q = k; q < e; ++q) if (s_[q] != '_') num += s_[q];
        Tok t{is_float ? Tok::Float : Tok::Int, num, 0, 0, p};
        if (is_float) t.f = std::strtod(num.c_str(), nullptr);
        else t.i = std::strtoll(num.c_str(), nullptr, 10);
        toks.push_back(t);
        k = e;
      } else if (c == '\'' || c == '"') {
        std::string v;
        size_t e = k + 1;
        while (true) {
          if (e >= s_.size()) fail(p, "unterminated string literal");
          char d = s_[e];
          if (d == c) break;
          if (d == '\\' && e + 1 < s_.size()) {
            e = unescape(e, v, p);
            continue;
          }
          v += d;
          ++e;
        }
        toks.push_back({Tok::Str, v, 0, 0, p});
        k = e + 1;
      } else {
        static const char* ops[] = {"//", "**", "==", "!=", ">=", "<=", "+", "-", "/", "*", "%", "~", "[", "]",
                                    "(", ")", "{", "}", "<", ">", "=", ".", ":", "|", ",", ";"};
        std::string op;
        for (const char* o : ops)
          if (s_.compare(k, std::strlen(o), o) == 0) { op = o; break; }
        if (op.empty()) fail(p, std::string("unexpected character '") + c + "'");
        if (op == "(" || op == "[" || op == "{") ++depth;
        if (op == ")" || op == "]" || op == "}") --depth;
        toks.push_back({Tok::Op, op, 0, 0, p});
        k += op.size();
      }
    }
  }

  // Python unicode-escape for one backslash sequence at s_[e]; returns new e.
  size_t unescape(size_t e, std::string& v, const Pos& p) {
    char n = s_[e + 1];
    auto hex = [&](size_t start, int count) -> uint32_t {
      uint32_t cp = 0;
      for (int q = 0; q < count; ++q) {
        if (start + size_t(q) >= s_.size() || !std::isxdigit(static_cast<unsigned char>(s_[start + size_t(q)])))
          fail(p, "truncated \\x/\\u/\\U escape in string literal");
        cp = cp * 16 + uint32_t(std::stoi(std::string(1, s_[start + size_t(q)]), nullptr, 16));
      }
      return cp;
    };
    auto put = [&](uint32_t cp) {
      if (cp < 0x80) v += char(cp);
      else if (cp < 0x800) { v += char(0xC0 | (cp >> 6)); v += char(0x80 | (cp & 0x3F)); }
      else if (cp < 0x10000) { v += char(0xE0 | (cp >> 12)); v += char(0x80 | ((cp >> 6) & 0x3F)); v += char(0x80 | (cp & 0x3F)); }
      else { v += char(0xF0 | (cp >> 18)); v += char(0x80 | ((cp >> 12) & 0x3F)); v += char(0x80 | ((cp >> 6) & 0x3F)); v += char(0x80 | (cp & 0x3F)); }
    };
    switch (n) {
      case 'n': v += '\n'; return e + 2;
      case 't': v += '\t'; return e + 2;
      case 'r': v += '\r'; return e + 2;
      case '\\': v += '\\'; return e + 2;
      case '\'': v += '\''; return e + 2;
      case '"': v += '"'; return e + 2;
      case 'a': v += '\a'; return e + 2;
      case 'b': v += '\b'; return e + 2;
      case 'f': v += '\f'; return e + 2;
      case 'v': v += '\v'; return e + 2;
      case '\n': return e + 2;
      case 'x': put(hex(e + 2, 2)); return e + 4;
      case 'u': put(hex(e + 2, 4)); return e + 6;
      case 'U': put(hex(e + 2, 8)); return e + 10;
      default:
        if (n >= '0' && n <= '7') {
          uint32_t cp = 0;
          size_t q = e + 1;
          for (int c = 0; c < 3 && q < s_.size() && s_[q] >= '0' && s_[q] <= '7'; ++c, ++q) cp = cp * 8 + uint32_t(s_[q] - '0');
          put(cp);
          return q;
        }
        v += '\\';  // unknown escapes are kept
        return e + 1;
    }
  }
};

// --------------------------------------------------------------------- AST
struct Node;
using NodeP = std::shared_ptr<Node>;
struct Node {
  enum T {
    // expressions
    Lit, Name, GetAttr, GetItem, Slice, Call, Filter, Test, Neg, Pos_, Not, And, Or, Bin, Cmp, Cond,
    ListLit, TupleLit, DictLit,
    // statements
    Text, Output, If, For, Set, SetAttr, Break, Continue, Body
  } t;
  Pos p;
  std::string s;               // name / operator / filter / attribute
  Value v;                     // literal
  std::vector<NodeP> a;        // children (args, body, ...)
  std::vector<std::pair<std::string, NodeP>> kw;  // keyword args
  std::vector<std::string> ops;  // Cmp operators; For/Set targets
  bool neg = false;            // Test: `is not`
  NodeP x, y, z;               // misc operands (cond, else body, ...)
};
inline NodeP mk(Node::T t, Pos p) { auto n = std::make_shared<Node>(); n->t = t; n->p = p; return n; }

class ExprParser {
 public:
  ExprParser(const std::vector<Tok>& t, size_t start) : t_(t), i_(start) {}
  size_t pos() const { return i_; }
  const Tok& peek(size_t o = 0) const { return t_[std::min(i_ + o, t_.size() - 1)]; }
  bool is_op(const char* o, size_t off = 0) const { return peek(off).t == Tok::Op && peek(off).s == o; }
  bool is_name(const char* n, size_t off = 0) const { return peek(off).t == Tok::Name && peek(off).s == n; }
  const Tok& next() { const Tok& t = peek(); if (i_ < t_.size() - 1) ++i_; return t; }
  void expect_op(const char* o) {
    if (!is_op(o)) fail(peek().p, std::string("expected '") + o + "', got " + describe(peek()));
    next();
  }
  static std::string describe(const Tok& t) {
    if (t.t == Tok::End) return "end of tag";
    if (t.t == Tok::Str) return "string literal";
    return "'" + t.s + "'";
  }

  NodeP expression(bool with_cond = true) {
    DepthGuard g(*this);
    NodeP n = parse_or();
    if (with_cond && is_name("if")) {
      Pos p = next().p;
      auto c = mk(Node::Cond, p);
      c->x = parse_or();
      c->y = n;
      if (is_name("else")) { next(); c->z = expression(); }
      return c;
    }
    return n;
  }
  // expression, or a bare tuple `a, b`
  NodeP tuple_expression() {
    NodeP first = expression();
    if (!is_op(",")) return first;
    auto t = mk(Node::TupleLit, first->p);
    t->a.push_back(first);
    while (is_op(",")) {
      next();
      if (peek().t == Tok::End) break;
      t->a.push_back(expression());
    }
    return t;
  }

 private:
  const std::vector<Tok>& t_;
  size_t i_;
  int depth_ = 0;

  // Bounds recursion (and so the evaluator's, which follows the tree): a
  // hostile template of a few KB of nested '(' or '-' must not overflow the
  // stack (found by fuzz_chat).
  static constexpr int kMaxDepth = 600;  // guard increments: about 3 per parenthesis level
  struct DepthGuard {
    ExprParser& p;
    explicit DepthGuard(ExprParser& q) : p(q) {
      if (++p.depth_ > kMaxDepth)
        fail(p.peek().p, "expression nested too deeply (more than " + std::to_string(kMaxDepth) + " levels)");
    }
    ~DepthGuard() { --p.depth_; }
  };

  NodeP parse_or() {
    NodeP n = parse_and();
    while (is_name("or")) { Pos p = next().p; auto o = mk(Node::Or, p); o->x = n; o->y = parse_and(); n = o; }
    return n;
  }
  NodeP parse_and() {
    NodeP n = parse_not();
    while (is_name("and")) { Pos p = next().p; auto o = mk(Node::And, p); o->x = n; o->y = parse_not(); n = o; }
    return n;
  }
  NodeP parse_not() {
    DepthGuard g(*this);
    if (is_name("not")) { Pos p = next().p; auto o = mk(Node::Not, p); o->x = parse_not(); return o; }
    return parse_compare();
  }
  NodeP parse_compare() {
    NodeP n = parse_math1();
    NodeP cmp;
    while (true) {
      std::string op;
      if (peek().t == Tok::Op && (peek().s == "==" || peek().s == "!=" || peek().s == "<" || peek().s == ">" ||
                                  peek().s == "<=" || peek().s == ">=")) op = next().s;
      else if (is_name("in")) { next(); op = "in"; }
      else if (is_name("not") && is_name("in", 1)) { next(); next(); op = "not in"; }
      else break;
      if (!cmp) { cmp = mk(Node::Cmp, n->p); cmp->a.push_back(n); }
      cmp->ops.push_back(op);
      cmp->a.push_back(parse_math1());
    }
    return cmp ? cmp : n;
  }
  NodeP bin(const std::string& op, NodeP l, NodeP r, Pos p) {
    auto b = mk(Node::Bin, p); b->s = op; b->x = std::move(l); b->y = std::move(r); return b;
  }
  NodeP parse_math1() {
    NodeP n = parse_concat();
    while (is_op("+") || is_op("-")) { const Tok& t = next(); n = bin(t.s, n, parse_concat(), t.p); }
    return n;
  }
  NodeP parse_concat() {
    NodeP n = parse_math2();
    while (is_op("~")) { const Tok& t = next(); n = bin("~", n, parse_math2(), t.p); }
    return n;
  }
  NodeP parse_math2() {
    NodeP n = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) { const Tok& t = next(); n = bin(t.s, n, parse_pow(), t.p); }
    return n;
  }
  NodeP parse_pow() {
    NodeP n = parse_unary();
    while (is_op("**")) { const Tok& t = next(); n = bin("**", n, parse_unary(), t.p); }
    return n;
  }
  NodeP parse_unary() {
    DepthGuard g(*this);
    if (is_op("-")) { Pos p = next().p; auto o = mk(Node::Neg, p); o->x = parse_unary(); return filters(o); }
    if (is_op("+")) { Pos p = next().p; auto o = mk(Node::Pos_, p); o->x = parse_unary(); return filters(o); }
    return filters(postfix(primary()));
  }
  void call_args(NodeP& call) {
    expect_op("(");
    while (!is_op(")")) {
      if (peek().t == Tok::Name && is_op("=", 1)) {
        std::string k = next().s;
        next();
        call->kw.emplace_back(k, expression());
      } else {
        call->a.push_back(expression());
      }
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
  }
  NodeP filters(NodeP n) {
    while (true) {
      if (is_op("|")) {
        next();
        const Tok& nm = next();
        if (nm.t != Tok::Name) fail(nm.p, "expected a filter name after '|'");
        static const char* known[] = {"length", "count", "default", "d", "safe", "string", "tojson", "trim", "upper",
                                      "lower", "int", "float", "first", "last", "list", "join", "items", "replace", "abs"};
        if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return nm.s == k; }) == std::end(known))
          fail(nm.p, "unsupported filter '" + nm.s + "'");
        auto f = mk(Node::Filter, nm.p);
        f->s = nm.s;
        f->x = n;
        if (is_op("(")) call_args(f);
        n = f;
      } else if (is_name("is")) {
        next();
        auto te = mk(Node::Test, peek().p);
        if (is_name("not")) { next(); te->neg = true; }
        const Tok& nm = next();
        if (nm.t != Tok::Name) fail(nm.p, "expected a test name after 'is'");
        static const char* known[] = {"defined", "undefined", "none", "boolean", "true", "false", "string", "number",
                                      "integer", "float", "mapping", "sequence", "iterable", "callable", "eq", "equalto",
                                      "ne", "even", "odd", "divisibleby"};
        if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return nm.s == k; }) == std::end(known))
          fail(nm.p, "unsupported test '" + nm.s + "'");
        te->s = nm.s;
        te->x = n;
        if (is_op("(")) call_args(te);
        else if (peek().t == Tok::Str || peek().t == Tok::Int || peek().t == Tok::Float ||
                 (peek().t == Tok::Name && !is_name("and") && !is_name("or") && !is_name("else") &&
                  !is_name("if") && !is_name("is") && !is_name("in") && !is_name("not")))
          te->a.push_back(primary());
        n = te;
      } else {
        return n;
      }
    }
  }
  NodeP postfix(NodeP n) {
    while (true) {
      if (is_op(".")) {
        next();
        const Tok& nm = next();
        if (nm.t != Tok::Name && nm.t != Tok::Int) fail(nm.p, "expected an attribute name after '.'");
        auto g = mk(Node::GetAttr, nm.p);
        g->s = nm.t == Tok::Int ? std::to_string(nm.i) : nm.s;
        g->x = n;
        n = g;
      } else if (is_op("[")) {
        Pos p = next().p;
        NodeP lo, hi, st;
        bool slice = false;
        if (!is_op(":")) lo = expression();
        if (is_op(":")) {
          slice = true;
          next();
          if (!is_op("]") && !is_op(":")) hi = expression();
          if (is_op(":")) { next(); if (!is_op("]")) st = expression(); }
        }
        expect_op("]");
        if (slice) {
          auto s = mk(Node::Slice, p);
          s->x = n;
          s->a = {lo, hi, st};
          n = s;
        } else {
          auto g = mk(Node::GetItem, p);
          g->x = n;
          g->y = lo;
          n = g;
        }
      } else if (is_op("(")) {
        auto c = mk(Node::Call, peek().p);
        c->x = n;
        call_args(c);
        n = c;
      } else {
        return n;
      }
    }
  }
  NodeP primary() {
    const Tok& t = peek();
    Pos p = t.p;
    if (t.t == Tok::Str) {
      std::string s = next().s;
      while (peek().t == Tok::Str) s += next().s;  // adjacent literals concatenate
      auto n = mk(Node::Lit, p); n->v = Value::str(s); return n;
    }
    if (t.t == Tok::Int) { auto n = mk(Node::Lit, p); n->v = Value::integer(next().i); return n; }
    if (t.t == Tok::Float) { auto n = mk(Node::Lit, p); n->v = Value::flt(next().f); return n; }
    if (t.t == Tok::Name) {
      std::string nm = next().s;
      auto n = mk(Node::Lit, p);
      if (nm == "true" || nm == "True") { n->v = Value::boolean(true); return n; }
      if (nm == "false" || nm == "False") { n->v = Value::boolean(false); return n; }
      if (nm == "none" || nm == "None") { n->v = Value::none(); return n; }
      n->t = Node::Name;
      n->s = nm;
      return n;
    }
    if (is_op("(")) {
      next();
      if (is_op(")")) { next(); return mk(Node::TupleLit, p); }
      NodeP e = expression();
      if (is_op(",")) {
        auto tu = mk(Node::TupleLit, p);
        tu->a.push_back(e);
        while (is_op(",")) { next(); if (is_op(")")) break; tu->a.push_back(expression()); }
        e = tu;
      }
      expect_op(")");
      return e;
    }
    if (is_op("[")) {
      next();
      auto l = mk(Node::ListLit, p);
      while (!is_op("]")) {
        l->a.push_back(expression());
        if (!is_op(",")) break;
        next();
      }
      expect_op("]");
      return l;
    }
    if (is_op("{")) {
      next();
      auto d = mk(Node::DictLit, p);
      while (!is_op("}")) {
        d->a.push_back(expression());
        expect_op(":");
        d->a.push_back(expression());
        if (!is_op(",")) break;
        next();
      }
      expect_op("}");
      return d;
    }
    fail(p, "unexpected " + describe(t) + " in expression");
  }
};

// -------------------------------------------------------------- statements
class Parser {
 public:
  explicit Parser(std::vector<Chunk> c) : c_(std::move(c)) {}
  NodeP parse() {
    auto body = mk(Node::Body, {});
    std::string stop = parse_body(body, {});
    if (!stop.empty()) fail(c_[i_ - 1].p, "unexpected '" + stop + "'");
    return body;
  }

 private:
  std::vector<Chunk> c_;
  size_t i_ = 0;

  static std::string kw(const Chunk& c) {
    if (c.toks.empty() || c.toks[0].t != Tok::Name) fail(c.p, "expected a statement name after '{%'");
    return c.toks[0].s;
  }
  static void expect_end(ExprParser& ep) {
    if (ep.peek().t != Tok::End) fail(ep.peek().p, "unexpected " + ExprParser::describe(ep.peek()) + " before end of tag");
  }

  // Parses chunks into body until a block whose keyword is in `stops`
  // (returned, chunk consumed) or the end (returns "").
  std::string parse_body(const NodeP& body, const std::vector<std::string>& stops) {
    while (i_ < c_.size()) {
      Chunk& c = c_[i_++];
      if (c.t == Chunk::Text) {
        auto n = mk(Node::Text, c.p); n->v = Value::str(c.text); body->a.push_back(n);
        continue;
      }
      if (c.t == Chunk::Var) {
        ExprParser ep(c.toks, 0);
        auto n = mk(Node::Output, c.p);
        n->x = ep.tuple_expression();
        expect_end(ep);
        body->a.push_back(n);
        continue;
      }
      std::string k = kw(c);
      for (const auto& s : stops) if (s == k) return k;
      ExprParser ep(c.toks, 1);
      if (k == "if") {
        auto n = mk(Node::If, c.p);
        n->a.push_back(ep.tuple_expression());
        expect_end(ep);
        while (true) {
          auto b = mk(Node::Body, c.p);
          std::string stop = parse_body(b, {"elif", "else", "endif"});
          n->a.push_back(b);
          if (stop.empty()) fail(c.p, "'if' without 'endif'");
          Chunk& sc = c_[i_ - 1];
          ExprParser ep2(sc.toks, 1);
          if (stop == "elif") { n->a.push_back(ep2.tuple_expression()); expect_end(ep2); continue; }
          expect_end(ep2);
          if (stop == "else") {
            auto eb = mk(Node::Body, sc.p);
            if (parse_body(eb, {"endif"}).empty()) fail(c.p, "'if' without 'endif'");
            expect_end_tag(c_[i_ - 1]);
            n->x = eb;
          }
          break;
        }
        body->a.push_back(n);
      } else if (k == "for") {
        auto n = mk(Node::For, c.p);
        while (true) {
          const Tok& t = ep.next();
          if (t.t != Tok::Name) fail(t.p, "expected a loop variable name in 'for'");
          n->ops.push_back(t.s);
          if (ep.is_op(",")) { ep.next(); continue; }
          break;
        }
        if (!ep.is_name("in")) fail(ep.peek().p, "expected 'in' in 'for'");
        ep.next();
        n->x = ep.expression(false);
        if (ep.is_name("if")) { ep.next(); n->y = ep.expression(false); }
        if (ep.is_name("recursive")) fail(ep.peek().p, "unsupported 'recursive' loop");
        expect_end(ep);
        auto b = mk(Node::Body, c.p);
        std::string stop = parse_body(b, {"else", "endfor"});
        if (stop.empty()) fail(c.p, "'for' without 'endfor'");
        expect_end_tag(c_[i_ - 1]);
        n->a.push_back(b);
        if (stop == "else") {
          auto eb = mk(Node::Body, c.p);
          if (parse_body(eb, {"endfor"}).empty()) fail(c.p, "'for' without 'endfor'");
          expect_end_tag(c_[i_ - 1]);
          n->z = eb;
        }
        body->a.push_back(n);
      } else if (k == "set") {
        const Tok& t = ep.next();
        if (t.t != Tok::Name) fail(t.p, "expected a variable name after 'set'");
        if (ep.is_op(".")) {
          ep.next();
          const Tok& attr = ep.next();
          if (attr.t != Tok::Name) fail(attr.p, "expected an attribute name in 'set'");
          auto n = mk(Node::SetAttr, c.p);
          n->s = t.s;
          n->ops.push_back(attr.s);
          ep.expect_op("=");
          n->x = ep.tuple_expression();
          expect_end(ep);
          body->a.push_back(n);
        } else {
          auto n = mk(Node::Set, c.p);
          n->ops.push_back(t.s);
          while (ep.is_op(",")) {
            ep.next();
            const Tok& t2 = ep.next();
            if (t2.t != Tok::Name) fail(t2.p, "expected a variable name in 'set'");
            n->ops.push_back(t2.s);
          }
          if (!ep.is_op("=")) fail(c.p, "unsupported statement 'set' block (only '{% set x = ... %}')");
          ep.next();
          n->x = ep.tuple_expression();
          expect_end(ep);
          body->a.push_back(n);
        }
      } else if (k == "break" || k == "continue") {
        expect_end(ep);
        body->a.push_back(mk(k == "break" ? Node::Break : Node::Continue, c.p));
      } else if (k == "generation") {  // transformers' AssistantTracker: render the body
        expect_end(ep);
        auto b = mk(Node::Body, c.p);
        if (parse_body(b, {"endgeneration"}).empty()) fail(c.p, "'generation' without 'endgeneration'");
        body->a.push_back(b);
      } else {
        fail(c.p, "unsupported statement '" + k + "'");
      }
    }
    return "";
  }
  static void expect_end_tag(const Chunk& c) {
    if (c.toks.size() != 2) fail(c.p, "unexpected tokens after '" + c.toks[0].s + "'");
  }
};

// ---------------------------------------------------------------- evaluator
class Interp {
 public:
  explicit Interp(std::unordered_map<std::string, Value> globals) { frames_.push_back(std::move(globals)); }

  std::string run(const NodeP& body) {
    out_.clear();
    exec(body);
    return out_;
  }

 private:
  enum class Flow { Normal, Break, Continue };
  std::vector<std::unordered_map<std::string, Value>> frames_;
  std::string out_;

  Value lookup(const std::string& name) {
    for (auto it = frames_.rbegin(); it != frames_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    if (name == "namespace" || name == "raise_exception" || name == "range" || name == "strftime_now" ||
        name == "dict")
      return Value::func(name);
    return Value::undefined("'" + name + "' is undefined");
  }

  [[noreturn]] static void undef_error(const Value& v, const Pos& p) { fail(p, v.s.empty() ? "value is undefined" : v.s); }
  static void no_undef(const Value& v, const Pos& p) { if (v.is_undef()) undef_error(v, p); }

  Flow exec(const NodeP& n) {
    switch (n->t) {
      case Node::Body:
        for (const auto& c : n->a) {
          Flow f = exec(c);
          if (f != Flow::Normal) return f;
        }
        return Flow::Normal;
      case Node::Text: out_ += n->v.s; return Flow::Normal;
      case Node::Output: out_ += py_str(eval(n->x)); return Flow::Normal;
      case Node::If:
        for (size_t k = 0; k + 1 < n->a.size(); k += 2)
          if (truthy(eval(n->a[k]))) return exec(n->a[k + 1]);
        if (n->x) return exec(n->x);
        return Flow::Normal;
      case Node::Set: {
        Value v = eval(n->x);
        if (n->ops.size() == 1) { frames_.back()[n->ops[0]] = v; return Flow::Normal; }
        std::vector<Value> items = iterate(v, n->p);
        if (items.size() != n->ops.size())
          fail(n->p, "cannot unpack " + std::to_string(items.size()) + " values into " + std::to_string(n->ops.size()) + " names");
        for (size_t k = 0; k < items.size(); ++k) frames_.back()[n->ops[k]] = items[k];
        return Flow::Normal;
      }
      case Node::SetAttr: {
        Value ns = lookup(n->s);
        if (ns.k != Value::K::Ns) fail(n->p, "cannot assign attribute on non-namespace object '" + n->s + "'");
        ns.dict->set(n->ops[0], eval(n->x));
        return Flow::Normal;
      }
      case Node::Break: return Flow::Break;
      case Node::Continue: return Flow::Continue;
      case Node::For: return exec_for(n);
      default: fail(n->p, "internal error: not a statement");
    }
  }

  Flow exec_for(const NodeP& n) {
    Value seq = eval(n->x);
    std::vector<Value> items = iterate(seq, n->x->p);
    if (n->y) {  // `for x in xs if cond`: filter first (loop.length counts filtered items)
      std::vector<Value> kept;
      for (const auto& it : items) {
        frames_.emplace_back();
        bind_targets(n, it);
        if (truthy(eval(n->y))) kept.push_back(it);
        frames_.pop_back();
      }
      items.swap(kept);
    }
    if (items.empty()) {
      if (n->z) return exec(n->z);
      return Flow::Normal;
    }
    const size_t len = items.size();
    for (size_t k = 0; k < len; ++k) {
      frames_.emplace_back();
      bind_targets(n, items[k]);
      Value loop = Value::make_dict();
      auto& d = *loop.dict;
      d.set("index", Value::integer(int64_t(k + 1)));
      d.set("index0", Value::integer(int64_t(k)));
      d.set("revindex", Value::integer(int64_t(len - k)));
      d.set("revindex0", Value::integer(int64_t(len - k - 1)));
      d.set("first", Value::boolean(k == 0));
      d.set("last", Value::boolean(k + 1 == len));
      d.set("length", Value::integer(int64_t(len)));
      d.set("previtem", k > 0 ? items[k - 1] : Value::undefined("there is no previous item"));
      d.set("nextitem", k + 1 < len ? items[k + 1] : Value::undefined("there is no next item"));
      frames_.back()["loop"] = loop;
      Flow f = exec(n->a[0]);
      frames_.pop_back();
      if (f == Flow::Break) break;
    }
    return Flow::Normal;
  }

  void bind_targets(const NodeP& n, const Value& item) {
    if (n->ops.size() == 1) { frames_.back()[n->ops[0]] = item; return; }
    std::vector<Value> parts = iterate(item, n->p);
    if (parts.size() != n->ops.size())
      fail(n->p, "cannot unpack " + std::to_string(parts.size()) + " values into " + std::to_string(n->ops.size()) + " loop variables");
    for (size_t k = 0; k < parts.size(); ++k) frames_.back()[n->ops[k]] = parts[k];
  }

  std::vector<Value> iterate(const Value& v, const Pos& p) {
    switch (v.k) {
      case Value::K::Undefined: return {};  // jinja2 Undefined iterates as empty
      case Value::K::List: return *v.list;
      case Value::K::Dict: {
        std::vector<Value> keys;
        for (const auto& kv : v.dict->items) keys.push_back(Value::str(kv.first));
        return keys;
      }
      case Value::K::Str: {
        std::vector<Value> cs;
        for (auto& c : code_points(v.s)) cs.push_back(Value::str(c));
        return cs;
      }
      default: fail(p, std::string("'") + type_name(v) + "' object is not iterable");
    }
  }

  static int64_t length_of(const Value& v, const Pos& p) {
    switch (v.k) {
      case Value::K::Undefined: return 0;
      case Value::K::Str: return int64_t(code_points(v.s).size());
      case Value::K::List: return int64_t(v.list->size());
      case Value::K::Dict: case Value::K::Ns: return int64_t(v.dict->items.size());
      default: fail(p, std::string("object of type '") + type_name(v) + "' has no len()");
    }
  }

  Value get_item(const Value& obj, const Value& key, const Pos& p, bool attr_syntax) {
    no_undef(obj, p);
    if (obj.k == Value::K::Dict || obj.k == Value::K::Ns) {
      if (key.k == Value::K::Str) {
        if (const Value* v = obj.dict->find(key.s)) return *v;
      }
      return Value::undefined("'" + std::string(obj.k == Value::K::Ns ? "Namespace" : "dict object") +
                              "' has no attribute " + (key.k == Value::K::Str ? py_repr_str(key.s) : py_repr(key)));
    }
    if ((obj.k == Value::K::List || obj.k == Value::K::Str) && (key.k == Value::K::Int || key.k == Value::K::Bool)) {
      int64_t idx = key.as_int();
      if (obj.k == Value::K::List) {
        int64_t n = int64_t(obj.list->size());
        if (idx < 0) idx += n;
        if (idx < 0 || idx >= n) return Value::undefined(std::string("list object has no element ") + std::to_string(key.as_int()));
        return (*obj.list)[size_t(idx)];
      }
      auto cps = code_points(obj.s);
      int64_t n = int64_t(cps.size());
      if (idx < 0) idx += n;
      if (idx < 0 || idx >= n) return Value::undefined(std::string("str object has no element ") + std::to_string(key.as_int()));
      return Value::str(cps[size_t(idx)]);
    }
    (void)attr_syntax;
    return Value::undefined(std::string("'") + type_name(obj) + " object' has no attribute " + py_repr(key));
  }

  Value slice(const Value& obj, const NodeP& n) {
    no_undef(obj, n->p);
    auto opt = [&](const NodeP& e, bool& has) -> int64_t {
      has = false;
      if (!e) return 0;
      Value v = eval(e);
      if (v.k == Value::K::None) return 0;
      if (v.k != Value::K::Int && v.k != Value::K::Bool) fail(e->p, "slice indices must be integers or None");
      has = true;
      return v.as_int();
    };
    bool hl, hh, hs;
    int64_t lo = opt(n->a[0], hl), hi = opt(n->a[1], hh), st = opt(n->a[2], hs);
    if (!hs) st = 1;
    if (st == 0) fail(n->p, "slice step cannot be zero");
    std::vector<Value> src;
    bool is_str = obj.k == Value::K::Str;
    if (is_str) for (auto& c : code_points(obj.s)) src.push_back(Value::str(c));
    else if (obj.k == Value::K::List) src = *obj.list;
    else fail(n->p, std::string("'") + type_name(obj) + "' object is not subscriptable");
    int64_t len = int64_t(src.size());
    auto norm = [&](int64_t x, bool has, int64_t dflt) -> int64_t {
      if (!has) return dflt;
      if (x < 0) x += len;
      if (st > 0) return std::max<int64_t>(0, std::min(x, len));
      return std::max<int64_t>(-1, std::min(x, len - 1));
    };
    int64_t a = norm(lo, hl, st > 0 ? 0 : len - 1), b = norm(hi, hh, st > 0 ? len : -1);
    std::vector<Value> out;
    for (int64_t k = a; st > 0 ? k < b : k > b; k = __builtin_add_overflow(k, st, &k) ? b : k) out.push_back(src[size_t(k)]);
    if (is_str) {
      std::string s;
      for (auto& v : out) s += v.s;
      return Value::str(s);
    }
    return Value::make_list(std::move(out));
  }

  static Value arith(const std::string& op, const Value& a, const Value& b, const Pos& p) {
    if (a.is_undef()) undef_error(a, p);
    if (b.is_undef()) undef_error(b, p);
    auto bad = [&]() -> Value {
      fail(p, "unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
    };
    if (op == "+") {
      if (a.k == Value::K::Str && b.k == Value::K::Str) return Value::str(a.s + b.s);
      if (a.k == Value::K::List && b.k == Value::K::List) {
        List l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::make_list(std::move(l));
      }
    }
    if (op == "*") {
      const Value* seq = (a.k == Value::K::Str || a.k == Value::K::List) ? &a : (b.k == Value::K::Str || b.k == Value::K::List) ? &b : nullptr;
      const Value* cnt = seq == &a ? &b : &a;
      if (seq && (cnt->k == Value::K::Int || cnt->k == Value::K::Bool)) {
        int64_t c = std::max<int64_t>(0, cnt->as_int()); if (c > 0 && (seq->k == Value::K::Str ? seq->s.size() : seq->list->size()) > size_t(kMaxRepeat) / size_t(c)) fail(p, "sequence repetition result is too long (limit " + std::to_string(kMaxRepeat) + ")");
        if (seq->k == Value::K::Str) { std::string s; for (int64_t k = 0; k < c; ++k) s += seq->s; return Value::str(s); }
        List l;
        for (int64_t k = 0; k < c; ++k) l.insert(l.end(), seq->list->begin(), seq->list->end());
        return Value::make_list(std::move(l));
      }
    }
    if (!a.is_num() || !b.is_num()) return bad();
    bool fl = a.k == Value::K::Float || b.k == Value::K::Float;
    if (op == "/") {
      if (b.as_double() == 0) fail(p, "division by zero");
      return Value::flt(a.as_double() / b.as_double());
    }
    if (op == "**") {
      if (!fl && b.as_int() >= 0) {
        int64_t r = 1;
        if (const int64_t x = a.as_int(), e = b.as_int(); x >= -1 && x <= 1) r = x == 0 ? (e == 0) : (x == 1 || e % 2 == 0 ? 1 : -1); else for (int64_t k = 0; k < e; ++k) if (__builtin_mul_overflow(r, x, &r)) fail(p, "integer overflow in '**' (64-bit integers)");  // |x| >= 2 overflows within 63 steps
        return Value::integer(r);
      }
      return Value::flt(std::pow(a.as_double(), b.as_double()));
    }
    if (fl) {
      double x = a.as_double(), y = b.as_double();
      if (op == "+") return Value::flt(x + y);
      if (op == "-") return Value::flt(x - y);
      if (op == "*") return Value::flt(x * y);
      if (y == 0) fail(p, "division by zero");
      if (op == "//") return Value::flt(std::floor(x / y));
      if (op == "%") { double m = std::fmod(x, y); if (m != 0 && ((m < 0) != (y < 0))) m += y; return Value::flt(m); }
    } else {
      int64_t x = a.as_int(), y = b.as_int();
      if (int64_t r; (op == "+" && __builtin_add_overflow(x, y, &r)) || (op == "-" && __builtin_sub_overflow(x, y, &r)) || (op == "*" && __builtin_mul_overflow(x, y, &r)) || (y == -1 && x == INT64_MIN && (op == "//" || op == "%"))) fail(p, "integer overflow in '" + op + "' (64-bit integers)");
      if (op == "+") return Value::integer(x + y);
      if (op == "-") return Value::integer(x - y);
      if (op == "*") return Value::integer(x * y);
      if (y == 0) fail(p, "integer division or modulo by zero");
      int64_t q = x / y, m = x % y;
      if (m != 0 && ((m < 0) != (y < 0))) { --q; m += y; }
      if (op == "//") return Value::integer(q);
      if (op == "%") return Value::integer(m);
    }
    return bad();
  }

  static bool less(const Value& a, const Value& b, const Pos& p, const std::string& op) {
    if (a.is_num() && b.is_num()) return a.as_double() < b.as_double();
    if (a.k == Value::K::Str && b.k == Value::K::Str) return a.s < b.s;  // UTF-8 order == code point order
    if (a.k == Value::K::List && b.k == Value::K::List) {
      size_t n = std::min(a.list->size(), b.list->size());
      for (size_t k = 0; k < n; ++k) {
        if (!equal((*a.list)[k], (*b.list)[k])) return less((*a.list)[k], (*b.list)[k], p, op);
      }
      return a.list->size() < b.list->size();
    }
    if (a.is_undef()) undef_error(a, p);
    if (b.is_undef()) undef_error(b, p);
    fail(p, "'" + op + "' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
  }

  static bool contains(const Value& hay, const Value& needle, const Pos& p) {
    if (hay.is_undef()) undef_error(hay, p);
    switch (hay.k) {
      case Value::K::Str:
        if (needle.k != Value::K::Str) fail(p, std::string("'in <string>' requires string as left operand, not ") + type_name(needle));
        return hay.s.find(needle.s) != std::string::npos;
      case Value::K::List:
        for (const auto& e : *hay.list) if (equal(e, needle)) return true;
        return false;
      case Value::K::Dict: case Value::K::Ns:
        return needle.k == Value::K::Str && hay.dict->find(needle.s) != nullptr;
      default: fail(p, std::string("argument of type '") + type_name(hay) + "' is not iterable");
    }
  }

  Value eval(const NodeP& n) {
    switch (n->t) {
      case Node::Lit: return n->v;
      case Node::Name: return lookup(n->s);
      case Node::GetAttr: return get_item(eval(n->x), Value::str(n->s), n->p, true);
      case Node::GetItem: return get_item(eval(n->x), eval(n->y), n->p, false);
      case Node::Slice: return slice(eval(n->x), n);
      case Node::Neg: case Node::Pos_: {
        Value v = eval(n->x);
        no_undef(v, n->p);
        if (!v.is_num()) fail(n->p, std::string("bad operand type for unary ") + (n->t == Node::Neg ? "-" : "+") + ": '" + type_name(v) + "'");
        if (n->t == Node::Pos_) return v.k == Value::K::Bool ? Value::integer(v.as_int()) : v;
        if (v.k != Value::K::Float && v.as_int() == INT64_MIN) fail(n->p, "integer overflow in unary '-' (64-bit integers)");
        return v.k == Value::K::Float ? Value::flt(-v.f) : Value::integer(-v.as_int());
      }
      case Node::Not: return Value::boolean(!truthy(eval(n->x)));
      case Node::And: { Value l = eval(n->x); return truthy(l) ? eval(n->y) : l; }
      case Node::Or: { Value l = eval(n->x); return truthy(l) ? l : eval(n->y); }
      case Node::Cond: return truthy(eval(n->x)) ? eval(n->y) : (n->z ? eval(n->z) : Value::undefined("the inline if-expression evaluated to false and no else section was defined"));
      case Node::Bin: {
        Value a = eval(n->x), b = eval(n->y);
        if (n->s == "~") return Value::str(py_str(a) + py_str(b));
        return arith(n->s, a, b, n->p);
      }
      case Node::Cmp: {
        Value l = eval(n->a[0]);
        for (size_t k = 0; k < n->ops.size(); ++k) {
          Value r = eval(n->a[k + 1]);
          const std::string& op = n->ops[k];
          bool ok;
          if (op == "==") ok = equal(l, r);
          else if (op == "!=") ok = !equal(l, r);
          else if (op == "<") ok = less(l, r, n->p, op);
          else if (op == ">") ok = less(r, l, n->p, op);
          else if (op == "<=") ok = !less(r, l, n->p, op);
          else if (op == ">=") ok = !less(l, r, n->p, op);
          else if (op == "in") ok = contains(r, l, n->p);
          else ok = !contains(r, l, n->p);
          if (!ok) return Value::boolean(false);
          l = r;
        }
        return Value::boolean(true);
      }
      case Node::ListLit: case Node::TupleLit: {
        List l;
        for (const auto& e : n->a) l.push_back(eval(e));
        Value r = Value::make_list(std::move(l));
        r.tuple = n->t == Node::TupleLit;
        return r;
      }
      case Node::DictLit: {
        Value d = Value::make_dict();
        for (size_t k = 0; k + 1 < n->a.size(); k += 2) {
          Value key = eval(n->a[k]);
          if (key.k != Value::K::Str) fail(n->a[k]->p, "only string keys are supported in dict literals");
          d.dict->set(key.s, eval(n->a[k + 1]));
        }
        return d;
      }
      case Node::Call: return call(n);
      case Node::Filter: return filter(n);
      case Node::Test: {
        bool r = test(n);
        return Value::boolean(n->neg ? !r : r);
      }
      default: fail(n->p, "internal error: not an expression");
    }
  }

  std::vector<Value> eval_args(const NodeP& n) {
    std::vector<Value> a;
    for (const auto& e : n->a) a.push_back(eval(e));
    return a;
  }
  Value kwarg(const NodeP& n, const std::string& name, size_t pos_index, const std::vector<Value>& args, Value dflt) {
    for (const auto& kv : n->kw) if (kv.first == name) return eval(kv.second);
    if (pos_index < args.size()) return args[pos_index];
    return dflt;
  }

  static std::string strip_chars(const std::string& s, const std::string* chars, bool left, bool right) {
    auto is_strip = [&](char c) { return chars ? chars->find(c) != std::string::npos : is_ws(c); };
    size_t b = 0, e = s.size();
    if (left) while (b < e && is_strip(s[b])) ++b;
    if (right) while (e > b && is_strip(s[e - 1])) --e;
    return s.substr(b, e - b);
  }

  Value call(const NodeP& n) {
    // Method calls on strings and dicts.
    if (n->x->t == Node::GetAttr) {
      Value obj = eval(n->x->x);
      const std::string& m = n->x->s;
      std::vector<Value> args = eval_args(n);
      if (obj.k == Value::K::Str) {
        const std::string& s = obj.s;
        if (m == "strip" || m == "lstrip" || m == "rstrip") {
          const std::string* chars = (!args.empty() && args[0].k == Value::K::Str) ? &args[0].s : nullptr;
          return Value::str(strip_chars(s, chars, m != "rstrip", m != "lstrip"));
        }
        if (m == "upper" || m == "lower") {
          std::string r = s;
          for (auto& c : r) c = char(m == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
          return Value::str(r);
        }
        if ((m == "startswith" || m == "endswith") && args.size() == 1 && args[0].k == Value::K::Str) {
          const std::string& x = args[0].s;
          bool r = x.size() <= s.size() && (m == "startswith" ? s.compare(0, x.size(), x) == 0 : s.compare(s.size() - x.size(), x.size(), x) == 0);
          return Value::boolean(r);
        }
        if (m == "split") {
          List parts;
          if (args.empty() || args[0].k == Value::K::None) {
            size_t k = 0;
            while (k < s.size()) {
              while (k < s.size() && is_ws(s[k])) ++k;
              size_t e = k;
              while (e < s.size() && !is_ws(s[e])) ++e;
              if (e > k) parts.push_back(Value::str(s.substr(k, e - k)));
              k = e;
            }
          } else if (args[0].k == Value::K::Str && !args[0].s.empty()) {
            size_t k = 0, f;
            while ((f = s.find(args[0].s, k)) != std::string::npos) { parts.push_back(Value::str(s.substr(k, f - k))); k = f + args[0].s.size(); }
            parts.push_back(Value::str(s.substr(k)));
          } else {
            fail(n->p, "str.split: separator must be a non-empty string");
          }
          return Value::make_list(std::move(parts));
        }
        if (m == "replace" && args.size() == 2 && args[0].k == Value::K::Str && args[1].k == Value::K::Str)
          return Value::str(replace_all(s, args[0].s, args[1].s));
      } else if (obj.k == Value::K::Dict) {
        if (m == "items" || m == "keys" || m == "values") {
          List l;
          for (const auto& kv : obj.dict->items) {
            if (m == "items") l.push_back(Value::make_list({Value::str(kv.first), kv.second}));
            else if (m == "keys") l.push_back(Value::str(kv.first));
            else l.push_back(kv.second);
          }
          return Value::make_list(std::move(l));
        }
        if (m == "get" && !args.empty()) {
          if (args[0].k == Value::K::Str)
            if (const Value* v = obj.dict->find(args[0].s)) return *v;
          return args.size() > 1 ? args[1] : Value::none();
        }
      }
      if (obj.is_undef()) undef_error(obj, n->p);
      Value f = get_item(obj, Value::str(m), n->p, true);
      if (f.k != Value::K::Func) fail(n->p, std::string("unsupported method '") + m + "' on '" + type_name(obj) + "'");
    }
    Value f = eval(n->x);
    if (f.is_undef()) undef_error(f, n->p);
    if (f.k != Value::K::Func) fail(n->p, std::string("'") + type_name(f) + "' object is not callable");
    std::vector<Value> args = eval_args(n);
    if (f.s == "raise_exception") {
      throw Error("chat template raised an exception: " + (args.empty() ? std::string() : py_str(args[0])));
    }
    if (f.s == "namespace" || f.s == "dict") {
      Value ns = f.s == "namespace" ? Value::make_ns() : Value::make_dict();
      for (const auto& a : args) {
        if (a.k != Value::K::Dict) fail(n->p, f.s + "(): positional arguments must be dicts");
        for (const auto& kv : a.dict->items) ns.dict->set(kv.first, kv.second);
      }
      for (const auto& kv : n->kw) ns.dict->set(kv.first, eval(kv.second));
      return ns;
    }
    if (f.s == "range") {
      for (const auto& a : args) if (a.k != Value::K::Int && a.k != Value::K::Bool) fail(n->p, "range() arguments must be integers");
      int64_t start = 0, stop = 0, step = 1;
      if (args.size() == 1) stop = args[0].as_int();
      else if (args.size() >= 2) { start = args[0].as_int(); stop = args[1].as_int(); if (args.size() > 2) step = args[2].as_int(); }
      else fail(n->p, "range() expects 1 to 3 arguments");
      if (step == 0) fail(n->p, "range() step must not be zero");
      List l;
      for (int64_t k = start; step > 0 ? k < stop : k > stop; k = __builtin_add_overflow(k, step, &k) ? stop : k) if (l.size() >= size_t(kMaxRange)) fail(n->p, "range() too big (the sandbox limit is " + std::to_string(kMaxRange) + " items)"); else l.push_back(Value::integer(k));
      return Value::make_list(std::move(l));
    }
    if (f.s == "strftime_now") {
      if (args.size() != 1 || args[0].k != Value::K::Str) fail(n->p, "strftime_now() expects one format string");
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[256];
      size_t len = std::strftime(buf, sizeof buf, args[0].s.c_str(), &tm);
      return Value::str(std::string(buf, len));
    }
    fail(n->p, "unsupported function '" + f.s + "'");
  }

  static std::string replace_all(std::string s, const std::string& from, const std::string& to) {
    if (from.empty()) return s;
    size_t k = 0;
    while ((k = s.find(from, k)) != std::string::npos) { s.replace(k, from.size(), to); k += to.size(); }
    return s;
  }

  Value filter(const NodeP& n) {
    Value v = eval(n->x);
    std::vector<Value> args = eval_args(n);
    const std::string& f = n->s;
    if (f == "length" || f == "count") return Value::integer(length_of(v, n->p));
    if (f == "default" || f == "d") {
      Value dflt = kwarg(n, "default_value", 0, args, Value::str(""));
      bool boolean = truthy(kwarg(n, "boolean", 1, args, Value::boolean(false)));
      if (v.is_undef() || (boolean && !truthy(v))) return dflt;
      return v;
    }
    if (f == "safe") return v;
    if (f == "string") return Value::str(py_str(v));
    if (f == "tojson") {
      Value ind = kwarg(n, "indent", 0, args, Value::none());
      int indent = -1;
      if (ind.k == Value::K::Int) indent = int(ind.i);
      else if (ind.k != Value::K::None) fail(n->p, "tojson: indent must be an integer");
      if (!n->kw.empty())
        for (const auto& kv : n->kw)
          if (kv.first != "indent") fail(n->p, "tojson: unsupported argument '" + kv.first + "'");
      std::string o;
      no_undef(v, n->p);
      json_dump(v, o, indent, 0, n->p);
      return Value::str(o);
    }
    no_undef(v, n->p);
    if (f == "trim") {
      if (v.k != Value::K::Str) fail(n->p, "trim: expected a string");
      return Value::str(strip_chars(v.s, nullptr, true, true));
    }
    if (f == "upper" || f == "lower") {
      if (v.k != Value::K::Str) fail(n->p, f + ": expected a string");
      std::string r = v.s;
      for (auto& c : r) c = char(f == "upper" ? std::toupper(static_cast<unsigned char>(c)) : std::tolower(static_cast<unsigned char>(c)));
      return Value::str(r);
    }
    if (f == "int") {
      if (v.is_num()) return Value::integer(v.k == Value::K::Float ? int64_t(v.f) : v.as_int());
      if (v.k == Value::K::Str) { try { return Value::integer(std::stoll(v.s)); } catch (...) {} }
      return Value::integer(0);
    }
    if (f == "float") {
      if (v.is_num()) return Value::flt(v.as_double());
      if (v.k == Value::K::Str) { try { return Value::flt(std::stod(v.s)); } catch (...) {} }
      return Value::flt(0);
    }
    if (f == "first" || f == "last") {
      std::vector<Value> it = iterate(v, n->p);
      if (it.empty()) return Value::undefined(std::string("no ") + f + " item, sequence was empty");
      return f == "first" ? it.front() : it.back();
    }
    if (f == "list") return Value::make_list(iterate(v, n->p));
    if (f == "join") {
      std::string sep = args.empty() ? "" : py_str(args[0]);
      std::string o;
      bool first = true;
      for (const auto& e : iterate(v, n->p)) { if (!first) o += sep; first = false; o += py_str(e); }
      return Value::str(o);
    }
    if (f == "items") {
      if (v.k != Value::K::Dict) fail(n->p, "items: expected a dict");
      List l;
      for (const auto& kv : v.dict->items) l.push_back(Value::make_list({Value::str(kv.first), kv.second}));
      return Value::make_list(std::move(l));
    }
    if (f == "replace") {
      if (v.k != Value::K::Str || args.size() < 2 || args[0].k != Value::K::Str || args[1].k != Value::K::Str)
        fail(n->p, "replace: expected a string and two string arguments");
      return Value::str(replace_all(v.s, args[0].s, args[1].s));
    }
    if (f == "abs") {
      if (!v.is_num()) fail(n->p, "abs: expected a number");
      return v.k == Value::K::Float ? Value::flt(std::fabs(v.f)) : Value::integer(std::llabs(v.as_int()));
    }
    fail(n->p, "unsupported filter '" + f + "'");
  }

  bool test(const NodeP& n) {
    Value v = eval(n->x);
    const std::string& t = n->s;
    if (t == "defined") return !v.is_undef();
    if (t == "undefined") return v.is_undef();
    if (t == "none") return v.k == Value::K::None;
    if (t == "boolean") return v.k == Value::K::Bool;
    if (t == "true") return v.k == Value::K::Bool && v.b;
    if (t == "false") return v.k == Value::K::Bool && !v.b;
    if (t == "string") return v.k == Value::K::Str;
    if (t == "number") return v.is_num();
    if (t == "integer") return v.k == Value::K::Int;
    if (t == "float") return v.k == Value::K::Float;
    if (t == "mapping") return v.k == Value::K::Dict;
    if (t == "sequence") return v.k == Value::K::List || v.k == Value::K::Str || v.k == Value::K::Dict;
    if (t == "iterable") return v.k == Value::K::List || v.k == Value::K::Str || v.k == Value::K::Dict;
    if (t == "callable") return v.k == Value::K::Func;
    std::vector<Value> args = eval_args(n);
    if (t == "eq" || t == "equalto" || t == "==" || t == "ne" || t == "!=") {
      if (args.size() != 1) fail(n->p, "test '" + t + "' expects one argument");
      bool e = equal(v, args[0]);
      return (t == "ne" || t == "!=") ? !e : e;
    }
    if (t == "even" || t == "odd" || t == "divisibleby") {
      no_undef(v, n->p);
      if (v.k != Value::K::Int && v.k != Value::K::Bool) fail(n->p, "test '" + t + "' expects an integer");
      if (t == "divisibleby") {
        if (args.size() != 1 || args[0].k != Value::K::Int || args[0].i == 0) fail(n->p, "divisibleby expects a non-zero integer");
        return v.as_int() % args[0].i == 0;
      }
      bool even = v.as_int() % 2 == 0;
      return t == "even" ? even : !even;
    }
    fail(n->p, "unsupported test '" + t + "'");
  }
};

}  // namespace detail

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
