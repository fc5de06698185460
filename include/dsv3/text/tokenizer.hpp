// dsv3/text/tokenizer.hpp - byte-level BPE tokenizer that reads a HuggingFace
// `tokenizer.json` (the DeepSeek-V3 one) and reproduces what the HF
// `tokenizers` library does with it, id for id.
//
// Pipeline (encode):
//   1. the input must be valid UTF-8 (HF takes Python `str`, which cannot hold
//      invalid UTF-8); otherwise dsv3::Error "invalid UTF-8 at byte N".
//   2. added tokens are matched whole in the raw text, leftmost-longest, first
//      the ones with normalized=false, then (in the remaining pieces) the ones
//      with normalized=true - the order HF's AddedVocabulary uses. lstrip,
//      rstrip and single_word are honoured the way HF does (whitespace =
//      Unicode White_Space, word char = Alphabetic | Numeric | '_').
//   3. the remaining pieces go through the pre_tokenizer: a Sequence of Split
//      (behavior Isolated, invert false) regexes run with Oniguruma (the regex
//      engine HF tokenizers uses), each applied inside the pieces produced by
//      the previous one, then ByteLevel (add_prefix_space=false,
//      use_regex=false) which only maps bytes to the GPT-2 byte alphabet.
//   4. each piece is BPE-merged by merge rank (lowest rank first, leftmost on
//      ties), with a word cache; `ignore_merges` is honoured.
//   Anything else in tokenizer.json (other normalizers, pre-tokenizers,
//   post-processors, decoders, model options) is rejected with an error naming
//   it, instead of being silently mis-handled.
//
// decode: ids -> token strings -> ByteLevel decoder (bytes, then UTF-8 with
// invalid sequences replaced by U+FFFD exactly like Rust's
// String::from_utf8_lossy). skip_special drops only added tokens with
// "special": true. An id without a token is an error naming the id and the
// valid range, except below set_model_vocab_size(n), where it decodes to nothing
// as in HF (ids between the tokenizer's size and the model's embedding rows).
#pragma once

#include <oniguruma.h>
#include <sys/stat.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../error.hpp"
#include "../formats/file.hpp"
#include "../formats/json.hpp"

namespace dsv3 {

namespace tok_detail {

// Position of the first byte that makes `s` invalid UTF-8 (RFC 3629: no
// overlongs, no surrogates, max U+10FFFF), or npos if it is valid.
inline size_t utf8_invalid_pos(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) { ++i; continue; }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else return i;
    if (i + 1 >= n || p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (i + k >= n || p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string_view::npos;
}

// Length of the longest valid-so-far UTF-8 sequence prefix starting at p[0]
// (0 if p[0] is not a lead byte), and the full length it needs (`need`).
inline size_t utf8_valid_prefix(const unsigned char* p, size_t n, size_t& need) {
  unsigned char c = p[0];
  need = 0;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c < 0x80) { need = 1; return 1; }
  if (c >= 0xC2 && c <= 0xDF) need = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    need = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    need = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else return 0;
  size_t k = 1;
  for (; k < need && k < n; ++k) {
    unsigned char b = p[k];
    unsigned char l = (k == 1) ? lo : 0x80, h = (k == 1) ? hi : 0xBF;
    if (b < l || b > h) break;
  }
  return k;
}

// Rust String::from_utf8_lossy: each maximal invalid subpart becomes U+FFFD.
// If `hold_incomplete_tail` is set, a valid-but-incomplete sequence at the very
// end is not converted; its start offset is returned in `consumed`.
inline std::string utf8_lossy(std::string_view s, bool hold_incomplete_tail, size_t* consumed) {
  static const char kRepl[] = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(s.size());
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  size_t n = s.size(), i = 0;
  while (i < n) {
    size_t need;
    size_t k = utf8_valid_prefix(p + i, n - i, need);
    if (k == 0) { out += kRepl; ++i; continue; }
    if (k == need) { out.append(s.data() + i, k); i += k; continue; }
    if (i + k == n && hold_incomplete_tail) break;  // incomplete at the end
    out += kRepl;
    i += k;
  }
  if (consumed) *consumed = i;
  return out;
}

inline void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) out += char(cp);
  else if (cp < 0x800) { out += char(0xC0 | (cp >> 6)); out += char(0x80 | (cp & 0x3F)); }
  else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12)); out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18)); out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F)); out += char(0x80 | (cp & 0x3F));
  }
}

// Decodes one code point of valid UTF-8 at s[i]; advances i.
inline uint32_t next_cp(std::string_view s, size_t& i) {
  auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) { ++i; return c; }
  int len = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  uint32_t cp = c & (len == 4 ? 0x07 : len == 3 ? 0x0F : 0x1F);
  for (int k = 1; k < len && i + k < s.size(); ++k) cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return cp;
}

// GPT-2 byte <-> unicode alphabet used by the ByteLevel pre-tokenizer/decoder.
struct ByteAlphabet {
  std::array<std::string, 256> byte_to_str;  // UTF-8 of the char for each byte
  std::array<int16_t, 324> cp_to_byte;       // code point -> byte, -1 if none
  ByteAlphabet() {
    cp_to_byte.fill(-1);
    int extra = 0;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      uint32_t cp = printable ? uint32_t(b) : uint32_t(256 + extra++);
      append_utf8(byte_to_str[b], cp);
      cp_to_byte[cp] = int16_t(b);
    }
  }
  static const ByteAlphabet& get() {
    static const ByteAlphabet a;
    return a;
  }
};

inline void onig_init_once() {
  static const bool done = [] {
    OnigEncoding encs[1] = {ONIG_ENCODING_UTF8};
    onig_initialize(encs, 1);
    return true;
  }();
  (void)done;
}

// Owning wrapper around a compiled Oniguruma regex (UTF-8).
//
// Patterns come from tokenizer.json, which may be hostile: a pattern with
// catastrophic backtracking (\w*\w*\W\W on 2,000 letters: about 4e9 steps)
// would run for minutes. Each search is bounded to kStepsPerByte backtracking
// steps per byte of its range (plus a floor); the pre-tokenizer regexes of
// real tokenizers take 2-4 per byte. Past the bound the search is an error
// naming the pattern, never a hang.
class OnigRegex {
 public:
  static constexpr unsigned long kStepsPerByte = 64, kMinSteps = 1ul << 20;

  OnigRegex() = default;
  OnigRegex(const std::string& pattern, bool literal, const std::string& what) : pattern_(pattern), what_(what) {
    onig_init_once();
    regex_t* r = nullptr;
    OnigErrorInfo einfo;
    const auto* pat = reinterpret_cast<const OnigUChar*>(pattern.data());
    int rc = onig_new(&r, pat, pat + pattern.size(), ONIG_OPTION_NONE, ONIG_ENCODING_UTF8,
                      literal ? ONIG_SYNTAX_ASIS : ONIG_SYNTAX_DEFAULT, &einfo);
    if (rc != ONIG_NORMAL) {
      OnigUChar buf[ONIG_MAX_ERROR_MESSAGE_LEN];
      onig_error_code_to_str(buf, rc, &einfo);
      throw Error(what + ": cannot compile regex /" + pattern + "/: " +
                               reinterpret_cast<char*>(buf));
    }
    re_.reset(r, onig_free);
  }
  // Finds the first match in s[from, s.size()) where s is the whole subject
  // (look-around cannot see outside s). Returns false if none.
  bool search(std::string_view s, size_t from, OnigRegion* region, size_t& mb, size_t& me) const {
    const auto* base = reinterpret_cast<const OnigUChar*>(s.data());
    const auto* end = base + s.size();
    int r = onig_search_with_param(re_.get(), base, end, base + from, end, region, ONIG_OPTION_NONE,
                                   bounded(s.size() - from));
    if (r == ONIG_MISMATCH) return false;
    if (r < 0) failed(r, s.size(), from);
    mb = size_t(region->beg[0]);
    me = size_t(region->end[0]);
    return true;
  }
  // Anchored match at s[at]; returns match length or -1.
  long match_at(std::string_view s, size_t at, OnigRegion* region) const {
    const auto* base = reinterpret_cast<const OnigUChar*>(s.data());
    int r = onig_match_with_param(re_.get(), base, base + s.size(), base + at, region, ONIG_OPTION_NONE,
                                  bounded(s.size() - at));
    if (r == ONIG_MISMATCH) return -1;
    if (r < 0) failed(r, s.size(), at);
    return long(r);
  }

 private:
  static OnigMatchParam* bounded(size_t range) {
    struct Param {
      OnigMatchParam* p = onig_new_match_param();
      ~Param() { onig_free_match_param(p); }
    };
    thread_local Param mp;
    onig_initialize_match_param(mp.p);
    const unsigned long steps = std::max<unsigned long>(kMinSteps, kStepsPerByte * range);
    onig_set_retry_limit_in_match_of_match_param(mp.p, steps);
    onig_set_retry_limit_in_search_of_match_param(mp.p, steps);
    return mp.p;
  }
  [[noreturn]] void failed(int code, size_t n, size_t at) const {
    if (code == ONIGERR_RETRY_LIMIT_IN_MATCH_OVER || code == ONIGERR_RETRY_LIMIT_IN_SEARCH_OVER)
      throw Error(what_ + ": regex /" + pattern_ + "/ gave up at byte " + std::to_string(at) + " of a " +
                  std::to_string(n) + "-byte piece after " + std::to_string(kStepsPerByte) +
                  " backtracking steps per byte (catastrophic backtracking; a tokenizer regex must not need that)");
    OnigUChar buf[ONIG_MAX_ERROR_MESSAGE_LEN];
    onig_error_code_to_str(buf, code);
    throw Error(what_ + ": regex /" + pattern_ + "/ failed at byte " + std::to_string(at) + ": " +
                reinterpret_cast<char*>(buf));
  }

  std::shared_ptr<regex_t> re_;
  std::string pattern_, what_;
};

struct RegionGuard {
  OnigRegion* r;
  RegionGuard() : r(onig_region_new()) {}
  ~RegionGuard() { onig_region_free(r, 1); }
  RegionGuard(const RegionGuard&) = delete;
  RegionGuard& operator=(const RegionGuard&) = delete;
};

inline std::string read_file(const std::string& path) {
  return read_file_bounded(path, kMaxTokenizerBytes, "a tokenizer JSON file");
}

}  // namespace tok_detail

// SAX reader for tokenizer.json: builds a JSON DOM for everything except
// model.vocab and model.merges (left as null in the DOM), which are streamed
// into flat vectors. Avoids ~250k DOM nodes; halves the load time.
class TokenizerJsonSax {
 public:
  using json = nlohmann::json;
  json root;
  std::vector<std::pair<std::string, int64_t>> vocab;
  std::vector<std::pair<std::string, std::string>> merges;  // "a b" kept whole in .first if .second is "\x01"
  bool have_vocab = false, have_merges = false;
  std::string error;  // first structural problem in vocab/merges

  bool null() { return value(json(nullptr)); }
  bool boolean(bool b) { return value(json(b)); }
  bool number_integer(json::number_integer_t v) {
    if (mode_ == Vocab && depth_ == 1) {
      if (v < 0 || v >= (int64_t(1) << 24)) return bad("model.vocab['" + key_ + "']: expected a non-negative integer id");
      vocab.emplace_back(std::move(key_), int64_t(v));
      return true;
    }
    return value(json(v));
  }
  bool number_unsigned(json::number_unsigned_t v) {
    if (mode_ == Vocab && depth_ == 1) {
      if (v >= (uint64_t(1) << 24)) return bad("model.vocab['" + key_ + "']: id " + std::to_string(v) + " out of range (ids must be < 2^24; a larger one would allocate a table that large)");
      vocab.emplace_back(std::move(key_), int64_t(v));
      return true;
    }
    return value(json(v));
  }
  bool number_float(json::number_float_t v, const std::string&) { return value(json(v)); }
  bool string(std::string& v) {
    if (mode_ == Merges) {
      if (depth_ == 1) { merges.emplace_back(std::move(v), std::string("\x01")); return true; }
      if (depth_ == 2) { pair_.push_back(std::move(v)); return true; }
    }
    return value(json(std::move(v)));
  }
  bool binary(json::binary_t&) { return bad("unexpected binary value"); }
  bool key(std::string& k) {
    key_ = std::move(k);
    return true;
  }
  bool start_object(std::size_t) { return open(json::object(), false); }
  bool start_array(std::size_t) { return open(json::array(), true); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool parse_error(std::size_t pos, const std::string&, const nlohmann::detail::exception& e) {
    throw Error("not valid JSON at byte " + std::to_string(pos) + ": " + e.what());
  }

 private:
  enum Mode { Dom, Vocab, Merges, Skip };
  Mode mode_ = Dom;
  int depth_ = 0;  // nesting inside vocab/merges
  std::vector<json*> stack_;
  std::string key_;
  std::vector<std::string> pair_;

  bool bad(const std::string& m) {
    if (error.empty()) error = m;
    return true;
  }
  bool value(json v) {
    if (mode_ == Skip) return true;
    if (mode_ == Vocab) return bad("model.vocab['" + key_ + "']: expected a non-negative integer id");
    if (mode_ == Merges) return bad("model.merges: expected strings \"a b\" or pairs of strings");
    insert(std::move(v));
    return true;
  }
  json* insert(json v) {
    if (stack_.empty()) { root = std::move(v); return &root; }
    json& top = *stack_.back();
    if (top.is_array()) { top.push_back(std::move(v)); return &top.back(); }
    json& slot = top[key_];
    slot = std::move(v);
    return &slot;
  }
  bool open(json v, bool is_array) {
    if (mode_ != Dom) {
      ++depth_;
      if (mode_ == Merges && depth_ == 2 && is_array) { pair_.clear(); return true; }
      if (mode_ == Skip) return true;
      return bad(mode_ == Vocab ? "model.vocab: nested values are not allowed"
                                : "model.merges: expected strings \"a b\" or pairs of strings");
    }
    // model.vocab / model.merges directly under the top-level "model" object?
    if (stack_.size() == 2 && stack_[1] == model_ && (key_ == "vocab" || key_ == "merges")) {
      const bool vocab_key = key_ == "vocab";
      insert(json(nullptr));
      if (vocab_key && !is_array) { mode_ = Vocab; have_vocab = true; depth_ = 1; return true; }
      if (!vocab_key && is_array) { mode_ = Merges; have_merges = true; depth_ = 1; return true; }
      bad(vocab_key ? "model.vocab: expected an object of token -> id" : "model.merges: expected an array");
      mode_ = Skip;
      depth_ = 1;
      return true;
    }
    if (stack_.size() >= std::size_t(kMaxJsonDepth)) {  // formats/json.hpp: bounded nesting
      bad("JSON nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
      mode_ = Skip;
      depth_ = 1;
      return true;
    }
    const bool is_model = stack_.size() == 1 && key_ == "model" && !is_array;
    json* j = insert(std::move(v));
    stack_.push_back(j);
    if (is_model) model_ = j;
    return true;
  }
  bool close() {
    if (mode_ != Dom) {
      if (mode_ == Merges && depth_ == 2) {
        if (pair_.size() == 2) merges.emplace_back(std::move(pair_[0]), std::move(pair_[1]));
        else bad("model.merges: expected pairs of exactly two strings");
      }
      if (--depth_ == 0) mode_ = Dom;
      return true;
    }
    stack_.pop_back();
    return true;
  }
  json* model_ = nullptr;
};

class Tokenizer {
 public:
  struct AddedToken {
    std::string content;
    int32_t id = -1;
    bool special = false, normalized = false, lstrip = false, rstrip = false, single_word = false;
  };

  // Reads dir/tokenizer.json and, if present, dir/tokenizer_config.json.
  static Tokenizer from_dir(const std::string& dir) {
    Tokenizer t;
    std::string tj = dir + "/tokenizer.json";
    t.load_tokenizer_json(tok_detail::read_file(tj), tj);
    std::string tc = dir + "/tokenizer_config.json";
    struct stat st {};
    if (::stat(tc.c_str(), &st) == 0)  // present (opening it to probe would block on a FIFO)
      t.load_tokenizer_config(tok_detail::read_file(tc), tc);
    return t;
  }
  // Loads from the text of a tokenizer.json (no tokenizer_config.json).
  static Tokenizer from_json_text(const std::string& text, const std::string& name = "tokenizer.json") {
    Tokenizer t;
    t.load_tokenizer_json(text, name);
    return t;
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos = false) const {
    size_t bad = tok_detail::utf8_invalid_pos(text);
    if (bad != std::string_view::npos)
      throw Error("tokenizer: invalid UTF-8 at byte " + std::to_string(bad) +
                               " of the input text");
    std::vector<int32_t> ids;
    ids.reserve(text.size() / 3 + 2);
    if (add_bos) {
      if (bos_id_ < 0) throw Error("tokenizer: add_bos requested but no bos_token is configured");
      ids.push_back(bos_id_);
    }
    std::vector<Segment> segs;
    split_added(text, segs);
    for (const auto& s : segs) {
      if (s.id >= 0) ids.push_back(s.id);
      else encode_plain(text.substr(s.begin, s.end - s.begin), ids);
    }
    return ids;
  }

  std::string decode(const std::vector<int32_t>& ids, bool skip_special = false) const {
    std::string bytes;
    for (int32_t id : ids) append_token_bytes(id, skip_special, bytes);
    return tok_detail::utf8_lossy(bytes, false, nullptr);
  }

  // Raw bytes a token contributes to decoded text (ByteLevel decoder rules).
  const std::string& token_bytes(int32_t id) const {
    check_id(id);
    return id_bytes_[size_t(id)];
  }
  bool is_special(int32_t id) const {
    check_id(id);
    return id_special_[size_t(id)] != 0;
  }

  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  bool add_bos_default() const { return add_bos_default_; }
  // Number of ids with a token (base vocab + added tokens): 128,815 for V3.
  size_t vocab_size() const { return id_to_token_.size(); }
  // The model's vocabulary (embedding rows) can be larger than the tokenizer's:
  // DeepSeek-V3 has 129,280 rows and 128,815 tokens, and sampling can pick an id
  // in between. HF tokenizers' decode drops an id it has no token for (its
  // id_to_token is None); once this is set, decode and StreamDecoder drop the
  // ids in [0, n) without a token the same way. Ids outside [0, n) stay errors.
  // Unset (0), every id without a token is an error naming it.
  void set_model_vocab_size(int64_t n) { model_vocab_size_ = n; }
  int64_t model_vocab_size() const { return model_vocab_size_; }
  std::optional<int32_t> token_to_id(std::string_view tok) const {
    auto it = added_by_content_.find(std::string(tok));
    if (it != added_by_content_.end()) return it->second;
    auto jt = vocab_.find(std::string(tok));
    if (jt != vocab_.end()) return jt->second;
    return std::nullopt;
  }
  std::string id_to_token(int32_t id) const {
    check_id(id);
    return id_to_token_[size_t(id)];
  }
  const std::string& chat_template() const { return chat_template_; }
  const std::string& bos_token() const { return bos_token_; }
  const std::string& eos_token() const { return eos_token_; }
  const std::vector<AddedToken>& added_tokens() const { return added_; }

 private:
  friend class StreamDecoder;
  struct Segment {
    size_t begin, end;
    int32_t id;  // added-token id, or -1 for text to pre-tokenize
  };
  struct Trie {
    struct Node {
      std::vector<std::pair<unsigned char, int32_t>> next;
      int32_t token = -1;  // index into added_
    };
    std::vector<Node> nodes{1};
    std::array<bool, 256> first{};
    void insert(const std::string& s, int32_t tok) {
      int32_t cur = 0;
      for (unsigned char c : s) {
        int32_t nx = -1;
        for (auto& e : nodes[size_t(cur)].next)
          if (e.first == c) { nx = e.second; break; }
        if (nx < 0) {
          nx = int32_t(nodes.size());
          nodes[size_t(cur)].next.emplace_back(c, nx);
          nodes.emplace_back();
        }
        cur = nx;
      }
      if (!s.empty()) first[static_cast<unsigned char>(s[0])] = true;
      nodes[size_t(cur)].token = tok;
    }
    // Longest token starting at text[i]; returns its length (0 if none).
    size_t longest_at(std::string_view text, size_t i, int32_t& tok) const {
      size_t best = 0;
      int32_t cur = 0;
      for (size_t k = i; k < text.size(); ++k) {
        int32_t nx = -1;
        auto c = static_cast<unsigned char>(text[k]);
        for (auto& e : nodes[size_t(cur)].next)
          if (e.first == c) { nx = e.second; break; }
        if (nx < 0) break;
        cur = nx;
        if (nodes[size_t(cur)].token >= 0) { best = k + 1 - i; tok = nodes[size_t(cur)].token; }
      }
      return best;
    }
    bool empty() const { return nodes.size() == 1; }
  };
  struct PairHash {
    size_t operator()(uint64_t k) const noexcept {
      k ^= k >> 33; k *= 0xff51afd7ed558ccdULL; k ^= k >> 33;
      return size_t(k);
    }
  };
  struct Merge {
    int32_t rank, new_id;
  };

  std::unordered_map<std::string, int32_t> vocab_;       // base model vocab
  std::unordered_map<std::string, int32_t> added_by_content_;
  std::vector<std::string> id_to_token_;                 // all ids
  std::vector<std::string> id_bytes_;                    // decoded bytes per id
  std::vector<uint8_t> id_special_;
  std::vector<uint8_t> id_valid_;
  std::unordered_map<uint64_t, Merge, PairHash> merges_;
  std::array<int32_t, 256> byte_id_{};
  std::vector<AddedToken> added_;
  Trie trie_raw_, trie_norm_;
  std::vector<tok_detail::OnigRegex> splits_;
  tok_detail::OnigRegex ws_re_, word_re_;  // for lstrip/rstrip/single_word
  bool ignore_merges_ = false;
  int32_t bos_id_ = -1, eos_id_ = -1;
  bool add_bos_default_ = false;
  std::string bos_token_, eos_token_, chat_template_;

  struct Cache {
    std::mutex mu;
    std::unordered_map<std::string, std::vector<int32_t>> map;
  };
  // Word cache (thread-safe); shared by copies of the same Tokenizer.
  std::shared_ptr<Cache> cache_ = std::make_shared<Cache>();
  static constexpr size_t kCacheMax = 200000, kCacheMaxWord = 128;

  int64_t model_vocab_size_ = 0;  // set_model_vocab_size

  void check_id(int32_t id) const {
    if (id < 0 || size_t(id) >= id_valid_.size() || !id_valid_[size_t(id)])
      throw Error("tokenizer: token id " + std::to_string(id) +
                               " is outside the vocabulary (valid ids: 0.." +
                               std::to_string(int64_t(id_valid_.size()) - 1) + ")");
  }
  void append_token_bytes(int32_t id, bool skip_special, std::string& out) const {
    if (id >= 0 && id < model_vocab_size_ && (size_t(id) >= id_valid_.size() || !id_valid_[size_t(id)]))
      return;  // an embedding row without a token: dropped, as HF does (set_model_vocab_size)
    check_id(id);
    if (skip_special && id_special_[size_t(id)]) return;
    out += id_bytes_[size_t(id)];
  }

  // ---------------------------------------------------------------- loading
  static const nlohmann::json& need(const nlohmann::json& j, const char* key, const std::string& where) {
    auto it = j.find(key);
    if (it == j.end()) throw Error(where + ": missing field '" + key + "'");
    return *it;
  }
  static bool opt_bool(const nlohmann::json& j, const char* key, bool dflt, const std::string& where) {
    auto it = j.find(key);
    if (it == j.end() || it->is_null()) return dflt;
    if (!it->is_boolean()) throw Error(where + ": field '" + key + "' must be a boolean");
    return it->get<bool>();
  }
  static std::string type_of(const nlohmann::json& j, const std::string& where) {
    if (!j.is_object()) throw Error(where + ": expected an object");
    const auto& t = need(j, "type", where);
    if (!t.is_string()) throw Error(where + ".type: expected a string");
    return t.get<std::string>();
  }

  void load_tokenizer_json(const std::string& text, const std::string& file) {
    TokenizerJsonSax sax;
    try {
      nlohmann::json::sax_parse(text, &sax);
    } catch (const std::runtime_error& e) {
      throw Error(file + ": " + e.what());
    }
    const nlohmann::json& j = sax.root;
    if (!j.is_object()) throw Error(file + ": expected a JSON object at top level");

    // normalizer: null or an empty Sequence (identity) only.
    if (auto it = j.find("normalizer"); it != j.end() && !it->is_null()) {
      std::string ty = type_of(*it, file + ": normalizer");
      if (ty != "Sequence" || !need(*it, "normalizers", file + ": normalizer").empty())
        throw Error(file + ": normalizer '" + ty +
                                 "' is not supported (only null or an empty Sequence)");
    }
    load_pre_tokenizer(j, file);
    if (auto it = j.find("post_processor"); it != j.end() && !it->is_null()) {
      std::string ty = type_of(*it, file + ": post_processor");
      // ByteLevel post-processing only adjusts offsets; ids are unchanged.
      if (ty != "ByteLevel")
        throw Error(file + ": post_processor '" + ty + "' is not supported (only ByteLevel)");
    }
    {
      const auto& d = need(j, "decoder", file);
      std::string ty = d.is_null() ? "null" : type_of(d, file + ": decoder");
      if (ty != "ByteLevel")
        throw Error(file + ": decoder '" + ty + "' is not supported (only ByteLevel)");
    }
    load_model(need(j, "model", file), sax, file);
    load_added(j, file);
    build_decode_tables();
    ws_re_ = tok_detail::OnigRegex("\\p{White_Space}+", false, file);
    word_re_ = tok_detail::OnigRegex("[\\p{Alphabetic}\\p{N}_]", false, file);
  }

  void load_pre_tokenizer(const nlohmann::json& j, const std::string& file) {
    const auto& pt = need(j, "pre_tokenizer", file);
    const std::string where = file + ": pre_tokenizer";
    std::vector<const nlohmann::json*> steps;
    if (pt.is_null()) throw Error(where + ": null is not supported (need a ByteLevel step)");
    if (type_of(pt, where) == "Sequence") {
      const auto& arr = need(pt, "pretokenizers", where);
      if (!arr.is_array()) throw Error(where + ".pretokenizers: expected an array");
      for (const auto& s : arr) steps.push_back(&s);
    } else {
      steps.push_back(&pt);
    }
    bool saw_bytelevel = false;
    for (size_t i = 0; i < steps.size(); ++i) {
      const auto& s = *steps[i];
      std::string w = where + "[" + std::to_string(i) + "]";
      std::string ty = type_of(s, w);
      if (saw_bytelevel)
        throw Error(w + ": '" + ty + "' after ByteLevel is not supported");
      if (ty == "Split") {
        std::string beh = need(s, "behavior", w).get<std::string>();
        if (beh != "Isolated")
          throw Error(w + ": Split behavior '" + beh + "' is not supported (only Isolated)");
        if (opt_bool(s, "invert", false, w)) throw Error(w + ": Split with invert=true is not supported");
        const auto& pat = need(s, "pattern", w);
        if (pat.contains("Regex") && pat["Regex"].is_string())
          splits_.emplace_back(pat["Regex"].get<std::string>(), false, w);
        else if (pat.contains("String") && pat["String"].is_string())
          splits_.emplace_back(pat["String"].get<std::string>(), true, w);
        else
          throw Error(w + ".pattern: expected {\"Regex\": string} or {\"String\": string}");
      } else if (ty == "ByteLevel") {
        if (opt_bool(s, "add_prefix_space", true, w))
          throw Error(w + ": ByteLevel add_prefix_space=true is not supported");
        if (opt_bool(s, "use_regex", true, w))
          throw Error(w + ": ByteLevel use_regex=true is not supported");
        saw_bytelevel = true;
      } else {
        throw Error(w + ": pre-tokenizer type '" + ty +
                                 "' is not supported (only Split and ByteLevel)");
      }
    }
    if (!saw_bytelevel) throw Error(where + ": a final ByteLevel step is required");
  }

  void load_model(const nlohmann::json& m, TokenizerJsonSax& sax, const std::string& file) {
    const std::string w = file + ": model";
    std::string ty = type_of(m, w);
    if (ty != "BPE") throw Error(w + ": type '" + ty + "' is not supported (only BPE)");
    if (auto it = m.find("dropout"); it != m.end() && !it->is_null() && it->get<double>() != 0.0)
      throw Error(w + ": dropout is not supported");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (auto it = m.find(k); it != m.end() && !it->is_null() && !(it->is_string() && it->get<std::string>().empty()))
        throw Error(w + ": '" + k + "' is not supported");
    if (opt_bool(m, "byte_fallback", false, w)) throw Error(w + ": byte_fallback=true is not supported");
    ignore_merges_ = opt_bool(m, "ignore_merges", false, w);
    if (!sax.error.empty()) throw Error(file + ": " + sax.error);

    if (!sax.have_vocab) throw Error(w + ": missing field 'vocab' (an object of token -> id)");
    vocab_.reserve(sax.vocab.size() * 2);
    int64_t max_id = -1;
    for (auto& kv : sax.vocab) {
      max_id = std::max<int64_t>(max_id, kv.second);
      vocab_.emplace(std::move(kv.first), int32_t(kv.second));
    }
    sax.vocab.clear();
    sax.vocab.shrink_to_fit();
    id_to_token_.assign(size_t(max_id + 1), std::string());
    id_valid_.assign(size_t(max_id + 1), 0);
    for (const auto& kv : vocab_) {
      id_to_token_[size_t(kv.second)] = kv.first;
      id_valid_[size_t(kv.second)] = 1;
    }
    const auto& alpha = tok_detail::ByteAlphabet::get();
    for (int b = 0; b < 256; ++b) {
      auto it = vocab_.find(alpha.byte_to_str[size_t(b)]);
      if (it == vocab_.end())
        throw Error(w + ".vocab: byte-level symbol for byte " + std::to_string(b) +
                                 " is missing (not a byte-level BPE vocabulary)");
      byte_id_[size_t(b)] = it->second;
    }
    if (!sax.have_merges) throw Error(w + ": missing field 'merges' (an array)");
    merges_.reserve(sax.merges.size() * 2);
    std::string a, b, ab;
    for (size_t r = 0; r < sax.merges.size(); ++r) {
      auto& e = sax.merges[r];
      if (e.second == "\x01") {  // "a b" string form
        const std::string& s = e.first;
        size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
          throw Error(w + ".merges[" + std::to_string(r) + "]: expected \"a b\", got \"" + s + "\"");
        a.assign(s, 0, sp);
        b.assign(s, sp + 1, std::string::npos);
      } else {
        a = e.first;
        b = e.second;
      }
      ab.assign(a).append(b);
      auto ia = vocab_.find(a), ib = vocab_.find(b), ic = vocab_.find(ab);
      if (ia == vocab_.end() || ib == vocab_.end() || ic == vocab_.end())
        throw Error(w + ".merges[" + std::to_string(r) + "]: '" + a + "', '" + b +
                                 "' or their merge is not in the vocab");
      uint64_t key = (uint64_t(uint32_t(ia->second)) << 32) | uint32_t(ib->second);
      merges_.emplace(key, Merge{int32_t(r), ic->second});  // first (lowest rank) wins
    }
  }

  void load_added(const nlohmann::json& j, const std::string& file) {
    auto it = j.find("added_tokens");
    if (it == j.end() || it->is_null()) return;
    if (!it->is_array()) throw Error(file + ": added_tokens: expected an array");
    for (size_t i = 0; i < it->size(); ++i) {
      const auto& e = (*it)[i];
      std::string w = file + ": added_tokens[" + std::to_string(i) + "]";
      if (!e.is_object()) throw Error(w + ": expected an object");
      AddedToken t;
      const auto& c = need(e, "content", w);
      const auto& id = need(e, "id", w);
      if (!c.is_string() || c.get<std::string>().empty()) throw Error(w + ".content: expected a non-empty string");
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t(1) << 24))
        throw Error(w + ".id: expected a non-negative integer below 2^24");
      t.content = c.get<std::string>();
      if (tok_detail::utf8_invalid_pos(t.content) != std::string::npos)
        throw Error(w + ".content: invalid UTF-8");
      t.id = int32_t(id.get<int64_t>());
      t.special = opt_bool(e, "special", false, w);
      t.normalized = opt_bool(e, "normalized", !t.special, w);
      t.lstrip = opt_bool(e, "lstrip", false, w);
      t.rstrip = opt_bool(e, "rstrip", false, w);
      t.single_word = opt_bool(e, "single_word", false, w);
      if (size_t(t.id) >= id_to_token_.size()) {
        id_to_token_.resize(size_t(t.id) + 1);
        id_valid_.resize(size_t(t.id) + 1, 0);
      }
      id_to_token_[size_t(t.id)] = t.content;
      id_valid_[size_t(t.id)] = 1;
      added_by_content_[t.content] = t.id;
      (t.normalized ? trie_norm_ : trie_raw_).insert(t.content, int32_t(added_.size()));
      added_.push_back(std::move(t));
    }
  }

  void build_decode_tables() {
    const auto& alpha = tok_detail::ByteAlphabet::get();
    size_t n = id_to_token_.size();
    id_bytes_.assign(n, std::string());
    id_special_.assign(n, 0);
    for (size_t i = 0; i < n; ++i) {
      if (!id_valid_[i]) continue;
      const std::string& t = id_to_token_[i];
      std::string& out = id_bytes_[i];
      out.reserve(t.size());
      bool ok = true;
      for (size_t k = 0; k < t.size();) {
        uint32_t cp = tok_detail::next_cp(t, k);
        if (cp >= alpha.cp_to_byte.size() || alpha.cp_to_byte[cp] < 0) { ok = false; break; }
        out += char(alpha.cp_to_byte[cp]);
      }
      if (!ok) out = t;  // not a byte-level string (e.g. an added token): raw UTF-8
    }
    for (const auto& a : added_) id_special_[size_t(a.id)] = a.special ? 1 : 0;
  }

  void load_tokenizer_config(const std::string& text, const std::string& file) {
    TokenizerJsonSax sax;
    try {
      nlohmann::json::sax_parse(text, &sax);
    } catch (const std::runtime_error& e) {
      throw Error(file + ": " + e.what());
    }
    const nlohmann::json& j = sax.root;
    if (!j.is_object()) throw Error(file + ": expected a JSON object at top level");
    add_bos_default_ = opt_bool(j, "add_bos_token", false, file);
    auto tok_str = [&](const char* key) -> std::string {
      auto it = j.find(key);
      if (it == j.end() || it->is_null()) return {};
      if (it->is_string()) return it->get<std::string>();
      if (it->is_object() && it->contains("content") && (*it)["content"].is_string())
        return (*it)["content"].get<std::string>();
      throw Error(file + ": field '" + key + "' must be a string or an object with a string 'content'");
    };
    bos_token_ = tok_str("bos_token");
    eos_token_ = tok_str("eos_token");
    auto resolve = [&](const std::string& s, const char* key) -> int32_t {
      if (s.empty()) return -1;
      auto id = token_to_id(s);
      if (!id) throw Error(file + ": " + key + " '" + s + "' is not a token of the vocabulary");
      return *id;
    };
    bos_id_ = resolve(bos_token_, "bos_token");
    eos_id_ = resolve(eos_token_, "eos_token");
    if (auto it = j.find("chat_template"); it != j.end() && !it->is_null()) {
      if (it->is_string()) {
        chat_template_ = it->get<std::string>();
      } else if (it->is_array()) {
        // HF: a list of {name, template}; the one named "default" is used.
        const nlohmann::json* pick = nullptr;
        for (const auto& e : *it) {
          if (!e.is_object() || !e.contains("name") || !e.contains("template") || !e["name"].is_string() ||
              !e["template"].is_string())
            throw Error(file + ": chat_template list entries must be {\"name\": string, \"template\": string}");
          if (e["name"] == "default") pick = &e;
        }
        if (!pick && !it->empty()) pick = &(*it)[0];
        if (pick) chat_template_ = (*pick)["template"].get<std::string>();
      } else {
        throw Error(file + ": chat_template must be a string or a list of {name, template}");
      }
    }
  }

  // ---------------------------------------------------------------- encoding
  // Is the char ending at text[pos) (resp. starting at text[pos]) a word char?
  bool word_before(std::string_view text, size_t pos, OnigRegion* rg) const {
    if (pos == 0) return false;
    size_t b = pos - 1;
    while (b > 0 && (static_cast<unsigned char>(text[b]) & 0xC0) == 0x80) --b;
    return word_re_.match_at(text, b, rg) > 0;
  }
  bool word_after(std::string_view text, size_t pos, OnigRegion* rg) const {
    return pos < text.size() && word_re_.match_at(text, pos, rg) > 0;
  }

  // One pass of added-token matching over text[begin, end) with `trie`.
  void match_pass(std::string_view text, size_t begin, size_t end, const Trie& trie,
                  std::vector<Segment>& out) const {
    if (trie.empty()) { out.push_back({begin, end, -1}); return; }
    std::string_view sub = text.substr(begin, end - begin);  // HF matches inside the piece
    tok_detail::RegionGuard rg;
    size_t start_off = 0;
    size_t i = 0;
    while (i < sub.size()) {
      if (!trie.first[static_cast<unsigned char>(sub[i])]) { ++i; continue; }
      int32_t tok = -1;
      size_t len = trie.longest_at(sub, i, tok);
      if (len == 0) { ++i; continue; }
      const AddedToken& t = added_[size_t(tok)];
      size_t mb = i, me = i + len;
      i = me;  // matches never overlap
      if (t.single_word && (word_before(sub, mb, rg.r) || word_after(sub, me, rg.r))) continue;
      if (t.lstrip) {
        size_t nb = mb;
        while (nb > start_off) {  // walk back over whitespace code points
          size_t b = nb - 1;
          while (b > 0 && (static_cast<unsigned char>(sub[b]) & 0xC0) == 0x80) --b;
          if (ws_re_.match_at(sub.substr(0, nb), b, rg.r) <= 0) break;
          nb = b;
        }
        mb = std::max(nb, start_off);
      }
      if (t.rstrip) {
        long w = ws_re_.match_at(sub, me, rg.r);
        if (w > 0) me += size_t(w);
        i = me;
      }
      if (mb > start_off) out.push_back({begin + start_off, begin + mb, -1});
      out.push_back({begin + mb, begin + me, t.id});
      start_off = me;
    }
    if (start_off < sub.size()) out.push_back({begin + start_off, end, -1});
  }

  void split_added(std::string_view text, std::vector<Segment>& out) const {
    std::vector<Segment> first;
    match_pass(text, 0, text.size(), trie_raw_, first);
    for (const auto& s : first) {
      if (s.id >= 0) out.push_back(s);
      else match_pass(text, s.begin, s.end, trie_norm_, out);
    }
  }

  void encode_plain(std::string_view text, std::vector<int32_t>& ids) const {
    if (text.empty()) return;
    std::vector<std::pair<size_t, size_t>> pieces{{0, text.size()}}, next;
    tok_detail::RegionGuard rg;
    for (const auto& re : splits_) {
      next.clear();
      for (auto [pb, pe] : pieces) {
        std::string_view piece = text.substr(pb, pe - pb);
        size_t pos = 0, last = 0;
        size_t mb, me;
        while (pos <= piece.size() && re.search(piece, pos, rg.r, mb, me)) {
          if (me == mb) {  // empty match: HF drops empty pieces; step one char
            if (mb >= piece.size()) break;
            pos = mb + 1;
            while (pos < piece.size() && (static_cast<unsigned char>(piece[pos]) & 0xC0) == 0x80) ++pos;
            continue;
          }
          if (mb > last) next.emplace_back(pb + last, pb + mb);
          next.emplace_back(pb + mb, pb + me);
          last = pos = me;
        }
        if (last < piece.size()) next.emplace_back(pb + last, pe);
      }
      pieces.swap(next);
    }
    for (auto [pb, pe] : pieces) bpe(text.substr(pb, pe - pb), ids);
  }

  void bpe(std::string_view word, std::vector<int32_t>& ids) const {
    const bool cacheable = word.size() <= kCacheMaxWord;
    std::string key;
    if (cacheable) {
      key.assign(word.data(), word.size());
      std::lock_guard<std::mutex> lk(cache_->mu);
      auto it = cache_->map.find(key);
      if (it != cache_->map.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> out;
    bpe_uncached(word, out);
    ids.insert(ids.end(), out.begin(), out.end());
    if (cacheable) {
      std::lock_guard<std::mutex> lk(cache_->mu);
      if (cache_->map.size() >= kCacheMax) cache_->map.clear();
      cache_->map.emplace(std::move(key), std::move(out));
    }
  }

  void bpe_uncached(std::string_view word, std::vector<int32_t>& out) const {
    if (ignore_merges_) {
      std::string mapped;
      const auto& alpha = tok_detail::ByteAlphabet::get();
      for (unsigned char c : word) mapped += alpha.byte_to_str[c];
      auto it = vocab_.find(mapped);
      if (it != vocab_.end()) { out.push_back(it->second); return; }
    }
    struct Sym { int32_t id, prev, next; bool alive; };
    const int n = int(word.size());
    std::vector<Sym> sym(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i)
      sym[size_t(i)] = {byte_id_[static_cast<unsigned char>(word[size_t(i)])], i - 1, i + 1 < n ? i + 1 : -1, true};
    // Min-heap of candidate merges ordered by (rank, position).
    struct Cand { int32_t rank, pos, new_id, right_id; };
    auto cmp = [](const Cand& x, const Cand& y) { return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos; };
    std::vector<Cand> heap;
    heap.reserve(size_t(n));
    auto push_pair = [&](int l) {
      int r = sym[size_t(l)].next;
      if (r < 0) return;
      uint64_t key = (uint64_t(uint32_t(sym[size_t(l)].id)) << 32) | uint32_t(sym[size_t(r)].id);
      auto it = merges_.find(key);
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, l, it->second.new_id, sym[size_t(r)].id});
      std::push_heap(heap.begin(), heap.end(), cmp);
    };
    for (int i = 0; i + 1 < n; ++i) push_pair(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), cmp);
      Cand c = heap.back();
      heap.pop_back();
      Sym& L = sym[size_t(c.pos)];
      if (!L.alive || L.next < 0) continue;
      Sym& R = sym[size_t(L.next)];
      uint64_t key = (uint64_t(uint32_t(L.id)) << 32) | uint32_t(R.id);
      auto it = merges_.find(key);
      if (it == merges_.end() || it->second.new_id != c.new_id || R.id != c.right_id) continue;  // stale
      L.id = c.new_id;
      R.alive = false;
      L.next = R.next;
      if (R.next >= 0) sym[size_t(R.next)].prev = c.pos;
      if (L.prev >= 0) push_pair(L.prev);
      push_pair(c.pos);
    }
    for (int i = 0; i >= 0 && i < n; i = sym[size_t(i)].next) out.push_back(sym[size_t(i)].id);
  }
};

// Incremental detokenizer for generation: push() returns only complete UTF-8
// text; bytes of a character split across tokens are held back until the
// character is complete. push()...+flush() equals Tokenizer::decode(all ids).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tok, bool skip_special = false) : tok_(&tok), skip_(skip_special) {}
  std::string push(int32_t id) {
    tok_->append_token_bytes(id, skip_, pending_);
    size_t used = 0;
    std::string out = tok_detail::utf8_lossy(pending_, true, &used);
    pending_.erase(0, used);
    return out;
  }
  // Emits what is left (an incomplete trailing character becomes U+FFFD).
  std::string flush() {
    std::string out = tok_detail::utf8_lossy(pending_, false, nullptr);
    pending_.clear();
    return out;
  }

 private:
  const Tokenizer* tok_;
  bool skip_;
  std::string pending_;
};

}  // namespace dsv3
