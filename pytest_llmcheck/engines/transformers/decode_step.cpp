// The lean decode loop's per-token step (fastpath.FastDecoder.step) in C++.
//
// At one token per step a small model's step is some 35 small ATen calls per layer; from
// Python each costs a few microseconds of argument parsing and dispatch before its kernel
// runs, about a fifth of SmolLM2's time per token. This file makes the very same ATen calls,
// in the same order, on the same tensors, from C++: the kernels and their inputs are the
// ones the Python step uses, so the logits are bit for bit the same (checked at load against
// the model's own forward, as the Python step is). Nothing here computes on its own: every
// number comes out of an ATen operator or, for the int4-a8 recipe, out of that recipe's ops
// (llmcheck::w4a8_mm, llmcheck::rms_norm), called through the dispatcher.
//
// Built without architecture flags (-O2): it runs wherever torch runs.

#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/_weight_int4pack_mm_for_cpu.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/embedding.h>
#include <ATen/ops/full.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/mv.h>
#include <ATen/ops/roll.h>
#include <ATen/ops/rsqrt.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/split_with_sizes.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <optional>
#include <vector>

namespace {

enum Kind : int64_t { kPlain = 0, kInt4 = 1, kW4A8 = 2 };

using W4A8Mm = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                          const std::optional<at::Tensor>&, int64_t);
using RmsNorm = at::Tensor(const at::Tensor&, const at::Tensor&, double);

const c10::TypedOperatorHandle<W4A8Mm>& w4a8_mm() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("llmcheck::w4a8_mm", "").typed<W4A8Mm>();
  return op;
}

const c10::TypedOperatorHandle<RmsNorm>& fused_rms_norm() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("llmcheck::rms_norm", "").typed<RmsNorm>();
  return op;
}

// One product of the Python step: _Int4, _W4A8, or one plain F.linear.
struct Call {
  int64_t kind = kPlain;
  at::Tensor a;  // plain: weight; int4: packed; w4a8: packed
  at::Tensor b;  // int4: scale_and_zero; w4a8: sz
  std::optional<at::Tensor> bias;
  int64_t group = 0;
  std::vector<int64_t> sizes;

  // _Int4.raw / _W4A8.raw: (1, 1, sum of sizes); plain: F.linear(x, w, b)
  at::Tensor raw(const at::Tensor& x) const {
    if (kind == kPlain) return at::linear(x, a, bias);
    if (kind == kW4A8) return w4a8_mm().call(x.view({1, -1}), a, b, bias, group).view({1, 1, -1});
    at::Tensor y = at::_weight_int4pack_mm_for_cpu(x.view({1, -1}), a, group, b).view({1, 1, -1});
    if (bias) y.add_(*bias);
    return y.scalar_type() == x.scalar_type() ? y : y.to(x.scalar_type());
  }

  std::vector<at::Tensor> operator()(const at::Tensor& x) const {
    at::Tensor y = raw(x);
    if (sizes.size() > 1) return at::split_with_sizes(y, sizes, -1);
    return {y};
  }
};

// _Proj: the products of one input, one call or several.
struct Proj {
  std::vector<Call> calls;

  const Call* single() const { return calls.size() == 1 ? &calls[0] : nullptr; }

  std::vector<at::Tensor> operator()(const at::Tensor& x) const {
    std::vector<at::Tensor> out;
    for (const Call& call : calls)
      for (at::Tensor& y : call(x)) out.push_back(std::move(y));
    return out;
  }
};

// _rms: transformers' RMSNorm op for op, or int4-a8's one call.
struct Norm {
  bool fused = false;
  at::Tensor weight;
  double eps = 0.0;

  at::Tensor operator()(const at::Tensor& x) const {
    if (fused) return fused_rms_norm().call(x, weight, eps);
    const auto dtype = x.scalar_type();
    at::Tensor h = x.to(at::kFloat);
    at::Tensor variance = h.pow(2).mean({-1}, /*keepdim=*/true);
    h = h * at::rsqrt(variance + eps);
    return weight * h.to(dtype);
  }
};

struct Layer {
  Proj proj[4];  // q/k/v, o, gate/up, down
  Norm norm[2];  // input, post-attention
};

at::Tensor rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& signed_sin) {
  return (x * cos) + (at::roll(x, {x.size(-1) / 2}, {-1}) * signed_sin);
}

class Decoder : public torch::CustomClassHolder {
 public:
  Decoder(at::Tensor embed, at::Tensor inv_freq, double rope_scale, int64_t heads, int64_t kv_heads,
          int64_t head_dim, double scaling, bool gqa, int64_t layers)
      : embed_(std::move(embed)),
        inv_freq_(inv_freq.to(at::kFloat)),
        rope_scale_(rope_scale),
        heads_(heads),
        kv_heads_(kv_heads),
        dim_(head_dim),
        scaling_(scaling),
        gqa_(gqa),
        layers_(static_cast<size_t>(layers)) {}

  // One call of a projection; ``layer`` -1 is the lm_head (slot ignored).
  void add_call(int64_t layer, int64_t slot, int64_t kind, at::Tensor a, at::Tensor b,
                std::vector<at::Tensor> bias, int64_t group, std::vector<int64_t> sizes) {
    TORCH_CHECK(kind == kPlain || kind == kInt4 || kind == kW4A8, "decode_step: unknown kind ", kind);
    Call call{kind, std::move(a), std::move(b), std::nullopt, group, std::move(sizes)};
    if (!bias.empty()) call.bias = bias[0];
    if (layer < 0) {
      head_ = std::move(call);
    } else {
      TORCH_CHECK(layer < static_cast<int64_t>(layers_.size()) && slot >= 0 && slot < 4,
                  "decode_step: no projection ", layer, "/", slot);
      layers_[layer].proj[slot].calls.push_back(std::move(call));
    }
  }

  // A norm; ``layer`` -1 is the final norm (slot ignored).
  void set_norm(int64_t layer, int64_t slot, bool fused, at::Tensor weight, double eps) {
    Norm norm{fused, std::move(weight), eps};
    if (layer < 0) {
      final_norm_ = std::move(norm);
    } else {
      TORCH_CHECK(layer < static_cast<int64_t>(layers_.size()) && slot >= 0 && slot < 2,
                  "decode_step: no norm ", layer, "/", slot);
      layers_[layer].norm[slot] = std::move(norm);
    }
  }

  // The prompt's per-layer keys and values (from the model's own forward), extended by step.
  void start(std::vector<at::Tensor> keys, std::vector<at::Tensor> values) {
    TORCH_CHECK(keys.size() == layers_.size() && values.size() == layers_.size(),
                "decode_step: one key and value tensor per layer");
    keys_ = std::move(keys);
    values_ = std::move(values);
  }

  // FastDecoder.step, call for call: logits (vocab,) of the token after ``token``.
  at::Tensor step(const at::Tensor& token, int64_t position) {
    TORCH_CHECK(keys_.size() == layers_.size(), "decode_step: start() first");
    at::Tensor h = at::embedding(embed_, token.view({1, 1}));
    at::Tensor freqs = at::full({1, 1, 1}, static_cast<double>(position), at::kFloat) * inv_freq_;
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    at::Tensor cos = (emb.cos() * rope_scale_).to(h.scalar_type()).unsqueeze(1);
    at::Tensor sin = (emb.sin() * rope_scale_).to(h.scalar_type()).unsqueeze(1);
    const int64_t half = dim_ / 2;
    sin = at::cat({-sin.slice(-1, 0, half), sin.slice(-1, half)}, -1);
    const int64_t qk_width = (heads_ + kv_heads_) * dim_;
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& layer = layers_[i];
      at::Tensor residual = h;
      at::Tensor x = layer.norm[0](h);
      at::Tensor q, k, v;
      if (const Call* fused = layer.proj[0].single()) {  // one call: q and k rotated in one go
        at::Tensor y = fused->raw(x);
        at::Tensor qk = rope(y.slice(-1, 0, qk_width).view({1, 1, heads_ + kv_heads_, dim_}), cos, sin);
        qk = qk.transpose(1, 2);
        q = qk.slice(1, 0, heads_);
        k = qk.slice(1, heads_);
        v = y.slice(-1, qk_width).view({1, 1, kv_heads_, dim_}).transpose(1, 2);
      } else {
        std::vector<at::Tensor> qkv = layer.proj[0](x);
        q = rope(qkv[0].view({1, 1, heads_, dim_}), cos, sin).transpose(1, 2);
        k = rope(qkv[1].view({1, 1, kv_heads_, dim_}), cos, sin).transpose(1, 2);
        v = qkv[2].view({1, 1, kv_heads_, dim_}).transpose(1, 2);
      }
      keys_[i] = at::cat({keys_[i], k}, -2);
      values_[i] = at::cat({values_[i], v}, -2);
      at::Tensor out = at::scaled_dot_product_attention(q, keys_[i], values_[i], std::nullopt, 0.0,
                                                        /*is_causal=*/false, scaling_, gqa_);
      out = out.reshape({1, -1, 1, dim_}).transpose(1, 2).contiguous();
      out = out.reshape({1, 1, -1}).contiguous();
      h = residual + layer.proj[1](out)[0];
      residual = h;
      std::vector<at::Tensor> gate_up = layer.proj[2](layer.norm[1](h));
      h = residual + layer.proj[3](at::silu(gate_up[0]) * gate_up[1])[0];
    }
    h = final_norm_(h);
    if (head_.kind == kW4A8) return head_.raw(h).select(0, 0).select(0, -1);
    if (head_mv_) return at::mv(head_.a, h.select(0, 0).select(0, -1));
    return at::linear(h, head_.a).select(0, 0).select(0, -1);
  }

  // A bf16 lm_head as mv (FastDecoder.head_mv) or, by default, as linear.
  void set_head_mv(bool mv) { head_mv_ = mv; }

  // The keys so far (for checks).
  std::vector<at::Tensor> key_cache() const { return keys_; }

  // Drop the cache once an answer is done: it would hold memory until the next start().
  void clear() {
    keys_.clear();
    values_.clear();
  }

 private:
  at::Tensor embed_, inv_freq_;
  double rope_scale_;
  int64_t heads_, kv_heads_, dim_;
  double scaling_;
  bool gqa_;
  std::vector<Layer> layers_;
  Norm final_norm_;
  Call head_;
  bool head_mv_ = false;
  std::vector<at::Tensor> keys_, values_;
};

}  // namespace

TORCH_LIBRARY(llmcheck_decode, m) {
  m.class_<Decoder>("Decoder")
      .def(torch::init<at::Tensor, at::Tensor, double, int64_t, int64_t, int64_t, double, bool, int64_t>())
      .def("add_call", &Decoder::add_call)
      .def("set_norm", &Decoder::set_norm)
      .def("start", &Decoder::start)
      .def("step", &Decoder::step)
      .def("set_head_mv", &Decoder::set_head_mv)
      .def("key_cache", &Decoder::key_cache)
      .def("clear", &Decoder::clear);
}
