// cli/cmd_text.hpp - text subcommands of the dsv3 CLI: tokenize, detokenize,
// render-chat. Errors are thrown as dsv3::Error; the main prints them
// as "dsv3: error: ..." and exits with 1.
//
//   dsv3 tokenize   --tokenizer DIR [--bos]          stdin: JSON Lines of strings  -> arrays of ids
//   dsv3 detokenize --tokenizer DIR [--skip-special] stdin: JSON Lines of id arrays -> strings
//   dsv3 render-chat --tokenizer DIR [--template FILE] [--add-generation-prompt]
//        stdin: {"messages": [...], "tools": [...]?, other template variables?}
//        stdout: exactly the rendered text (no trailing newline added)
#pragma once

#include <CLI/CLI.hpp>
#include <dsv3/formats/file.hpp>
#include <dsv3/formats/json.hpp>
#include <dsv3/text/chat_template.hpp>
#include <dsv3/text/tokenizer.hpp>
#include <nlohmann/json.hpp>

#include <iostream>
#include <iterator>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace dsv3_cli {

inline nlohmann::json parse_stdin_line(const std::string& cmd, size_t lineno, const std::string& line) {
  return dsv3::parse_json(line, cmd + ": stdin line " + std::to_string(lineno));
}

inline void run_tokenize(const std::string& dir, bool bos, std::istream& in, std::ostream& out) {
  auto tok = dsv3::Tokenizer::from_dir(dir);
  std::string line;
  size_t lineno = 0;
  while (dsv3::read_line_bounded(in, line, dsv3::kMaxTextInputBytes, "tokenize: stdin line " + std::to_string(lineno + 1))) {
    ++lineno;
    if (line.empty()) continue;
    nlohmann::json j = parse_stdin_line("tokenize", lineno, line);
    if (!j.is_string())
      throw dsv3::Error("tokenize: stdin line " + std::to_string(lineno) + ": expected a JSON string, got " +
                               j.type_name());
    std::vector<int32_t> ids;
    try {
      ids = tok.encode(j.get_ref<const std::string&>(), bos);
    } catch (const std::runtime_error& e) {
      throw dsv3::Error("tokenize: stdin line " + std::to_string(lineno) + ": " + e.what());
    }
    out << nlohmann::json(ids).dump() << '\n';
  }
  out.flush();
  if (!out) throw dsv3::Error("tokenize: stdout: write failed");
}

inline void run_detokenize(const std::string& dir, bool skip_special, int64_t model_vocab, std::istream& in,
                           std::ostream& out) {
  auto tok = dsv3::Tokenizer::from_dir(dir);
  tok.set_model_vocab_size(model_vocab);
  std::string line;
  size_t lineno = 0;
  while (dsv3::read_line_bounded(in, line, dsv3::kMaxTextInputBytes, "detokenize: stdin line " + std::to_string(lineno + 1))) {
    ++lineno;
    if (line.empty()) continue;
    nlohmann::json j = parse_stdin_line("detokenize", lineno, line);
    const std::string where = "detokenize: stdin line " + std::to_string(lineno);
    if (!j.is_array()) throw dsv3::Error(where + ": expected a JSON array of token ids, got " + j.type_name());
    std::vector<int32_t> ids;
    for (const auto& e : j) {
      if (!e.is_number_integer() || e.get<int64_t>() < INT32_MIN || e.get<int64_t>() > INT32_MAX)
        throw dsv3::Error(where + ": token ids must be integers, got " + e.dump());
      ids.push_back(int32_t(e.get<int64_t>()));
    }
    std::string text;
    try {
      text = tok.decode(ids, skip_special);
    } catch (const std::runtime_error& e) {
      throw dsv3::Error(where + ": " + e.what());
    }
    out << nlohmann::json(text).dump() << '\n';
  }
  out.flush();
  if (!out) throw dsv3::Error("detokenize: stdout: write failed");
}

inline void run_render_chat(const std::string& dir, const std::string& template_file, bool add_generation_prompt,
                            std::istream& in, std::ostream& out) {
  auto tok = dsv3::Tokenizer::from_dir(dir);
  std::string tmpl;
  if (!template_file.empty()) {
    tmpl = dsv3::read_file_bounded(template_file, dsv3::kMaxTextInputBytes, "a chat template");
  } else {
    tmpl = tok.chat_template();
    if (tmpl.empty())
      throw dsv3::Error("render-chat: " + dir + "/tokenizer_config.json has no chat_template; pass --template FILE");
  }
  std::string input;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    input.append(buf, std::size_t(in.gcount()));
    if (input.size() > dsv3::kMaxTextInputBytes)
      throw dsv3::Error("render-chat: stdin: more than " + std::to_string(dsv3::kMaxTextInputBytes) + " bytes of messages");
  }
  if (in.bad()) throw dsv3::Error("render-chat: stdin: read error");
  const nlohmann::json j = dsv3::parse_json(input, "render-chat: stdin");
  if (!j.is_object() || !j.contains("messages"))
    throw dsv3::Error("render-chat: stdin must be a JSON object with a \"messages\" array");
  nlohmann::json extra = nlohmann::json::object();
  if (!tok.bos_token().empty()) extra["bos_token"] = tok.bos_token();
  if (!tok.eos_token().empty()) extra["eos_token"] = tok.eos_token();
  for (auto it = j.begin(); it != j.end(); ++it)
    if (it.key() != "messages" && it.key() != "add_generation_prompt") extra[it.key()] = it.value();
  out << dsv3::render_chat(tmpl, j["messages"], add_generation_prompt, extra);
  out.flush();
}

}  // namespace dsv3_cli

inline void add_text_commands(CLI::App& app) {
  {
    auto* sc = app.add_subcommand("tokenize", "Encode JSON-Lines strings from stdin to JSON arrays of token ids");
    auto dir = std::make_shared<std::string>();
    auto bos = std::make_shared<bool>(false);
    sc->add_option("--tokenizer", *dir, "Directory with tokenizer.json (and tokenizer_config.json)")->required();
    sc->add_flag("--bos", *bos, "Prepend the BOS token id");
    sc->callback([dir, bos] { dsv3_cli::run_tokenize(*dir, *bos, std::cin, std::cout); });
  }
  {
    auto* sc = app.add_subcommand("detokenize", "Decode JSON-Lines arrays of token ids from stdin to JSON strings");
    auto dir = std::make_shared<std::string>();
    auto skip = std::make_shared<bool>(false);
    sc->add_option("--tokenizer", *dir, "Directory with tokenizer.json (and tokenizer_config.json)")->required();
    sc->add_flag("--skip-special", *skip, "Drop tokens marked special (BOS/EOS/pad/placeholders)");
    auto vocab = std::make_shared<int64_t>(0);
    sc->add_option("--vocab-size", *vocab,
                   "The model's vocab_size: ids below it without a token decode to nothing, as HF tokenizers do "
                   "(DeepSeek-V3: 129280 rows, 128815 tokens). Default: such ids are errors")
        ->check(CLI::NonNegativeNumber);
    sc->callback([dir, skip, vocab] { dsv3_cli::run_detokenize(*dir, *skip, *vocab, std::cin, std::cout); });
  }
  {
    auto* sc = app.add_subcommand("render-chat", "Render {\"messages\": [...]} from stdin with the chat template");
    auto dir = std::make_shared<std::string>();
    auto tmpl = std::make_shared<std::string>();
    auto agp = std::make_shared<bool>(false);
    sc->add_option("--tokenizer", *dir, "Directory with tokenizer.json and tokenizer_config.json")->required();
    sc->add_option("--template", *tmpl, "Jinja chat template file (default: tokenizer_config.json's chat_template)");
    sc->add_flag("--add-generation-prompt", *agp, "End with the assistant prompt");
    sc->callback([dir, tmpl, agp] { dsv3_cli::run_render_chat(*dir, *tmpl, *agp, std::cin, std::cout); });
  }
}
