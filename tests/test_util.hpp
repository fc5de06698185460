// Helpers shared by the test files: temp dirs, file I/O, the V3 config.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <dsv3/config.hpp>
#include <dsv3/dispatch.hpp>

namespace test {

struct TempDir {
  std::string path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "dsv3-test-XXXXXX").string();
    path = ::mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

inline std::string read_file(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream os;
  os << f.rdbuf();
  return os.str();
}

inline void write_file(const std::string& p, const std::string& data) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f << data;
}

// The published DeepSeek-V3 config.json values (model-semantics §1.1).
inline nlohmann::json v3_config_json() {
  return nlohmann::json::parse(R"({
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3",
    "vocab_size": 129280, "hidden_size": 7168, "intermediate_size": 18432,
    "moe_intermediate_size": 2048, "num_hidden_layers": 61, "first_k_dense_replace": 3,
    "moe_layer_freq": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_routed_experts": 256, "n_shared_experts": 1, "num_experts_per_tok": 8,
    "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5, "norm_topk_prob": true,
    "scoring_func": "sigmoid", "topk_method": "noaux_tc", "q_lora_rank": 1536,
    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "rope_theta": 10000,
    "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                     "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1,
    "num_nextn_predict_layers": 1, "attention_bias": false, "torch_dtype": "bfloat16",
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                            "quant_method": "fp8", "weight_block_size": [128, 128]}
  })");
}

inline dsv3::Config v3_config() { return dsv3::Config::from_json(v3_config_json()); }

// The backend the model tests run on: DSV3_TEST_BACKEND (cpu, the default, or
// reference). ctest runs the suite once per backend (tests/CMakeLists.txt), so
// every golden holds on the literal reference as on the fast default.
inline std::string test_backend() {
  const char* b = std::getenv("DSV3_TEST_BACKEND");
  return b && *b ? b : "cpu";
}
template <class M>
inline M& use_backend(M& m) {
  m.set_backend(dsv3::backend_named<typename M::Scalar>(test_backend()));
  return m;
}

}  // namespace test
