// dsv3/text/jinja/interp.hpp — evaluates a syntax tree: scopes, filters, tests, methods, loops and the other
// statements (no macros), within jinja2's sandbox limits.
// (part of the chat-template interpreter; text/chat_template.hpp is its entry point)
#pragma once

#include "parser.hpp"

namespace dsv3 {
namespace jinja {
namespace detail {

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
        const size_t len = seq->k == Value::K::Str ? seq->s.size() : seq->list->size();
        int64_t c = std::max<int64_t>(0, cnt->as_int());
        if (c > 0 && len > size_t(kMaxRepeat) / size_t(c))
          fail(p, "sequence repetition result is too long (limit " + std::to_string(kMaxRepeat) + ")");
        if (len == 0) c = 0;  // an empty sequence repeated any number of times is empty (no loop of c steps)
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
}  // namespace jinja
}  // namespace dsv3
