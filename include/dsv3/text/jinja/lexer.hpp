// dsv3/text/jinja/lexer.hpp — splits a template into text, {{ }} and {% %} chunks and their tokens, with jinja2's
// whitespace control (trim_blocks, lstrip_blocks, -).
// (part of the chat-template interpreter; text/chat_template.hpp is its entry point)
#pragma once

#include "value.hpp"

namespace dsv3 {
namespace jinja {
namespace detail {

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

}  // namespace detail
}  // namespace jinja
}  // namespace dsv3
