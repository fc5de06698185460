// dsv3/text/jinja/parser.hpp — the syntax tree, and the parsers of expressions and statements.
// (part of the chat-template interpreter; text/chat_template.hpp is its entry point)
#pragma once

#include "lexer.hpp"

namespace dsv3 {
namespace jinja {
namespace detail {

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

}  // namespace detail
}  // namespace jinja
}  // namespace dsv3
