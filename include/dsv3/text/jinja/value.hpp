// dsv3/text/jinja/value.hpp — the values a template computes with (Python-like: None, bool, int,
// float, str, list, dict, namespace), their Python str/repr/json forms, truthiness and equality.
// (part of the chat-template interpreter; text/chat_template.hpp is its entry point)
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

#include "../../error.hpp"

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

}  // namespace detail
}  // namespace jinja
}  // namespace dsv3
