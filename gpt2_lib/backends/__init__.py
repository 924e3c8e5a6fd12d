"""The backend seam: every piece of backend-specific speed code, in one place.

The model (`gpt2_lib.layers`, `gpt2_lib.models`) is written once with
`keras.ops`. Where one backend runs measurably faster another way, the
faster way lives here, with a `supports(...)` check that says when it
computes exactly what the `keras.ops` reference computes, one call site in
the model, and a test comparing it to the reference (outputs and gradients,
`tests/backends/`). A new mode (quantized kernels, sharding) is handled here
once, not in every copy of the model.

| module | backends | call site | what it buys |
|---|---|---|---|
| `attention` | torch: Keras' SDPA attention with the causal flag when nothing is padded; JAX/TF: blocked causal attention; the KV cache stores heads before positions, read as stored (`cached_attention`); JAX: each block writes its keys/values into the whole KV cache, in place (`updates_whole_cache`); elsewhere generation carries one cache per block; a cached step attends over the cache up to its position (`windowed_attention`: XLA, one `ops.switch` branch per window of 256 slots; torch, and its fast path, the exact keys) | `CachedMultiHeadAttention`, `GPT2Backbone.call_with_cache`, `GPT2CausalLM.generate_step`, `torch_gpt2` | 1.1-1.15x forward at 512-1024 tokens; JAX float32 decoding 1.2x at batch 8, one cache copy fewer; TensorFlow float32 decoding 1.22x at batch 8; heads-first cache: decoding 1.07x / 1.10x (JAX) and 1.0x / 1.08x (TensorFlow) at batch 1 / 8; generating to max_length 1024, JAX 1.33x / 1.50x at batch 1 / 8 |
| `torch_gpt2` | torch: the decoder blocks as products on the weight table, cache written in place | `GPT2Backbone.call`, `GPT2CausalLM.generation_blocks` | ~150 layer calls and the cache copies per step removed; float32 decoding 1.43x / 1.45x at batch 1 / 8 |
| `torch_matmul` | torch on CPU: float32 products (and their gradients) on oneDNN's GEMM instead of MKL's; exact int8 products (`torch._int_mm` with VNNI/AMX, float32 products of the int8 values without); on AMX, int8 and bfloat16 products with a column-major kernel taken first | `torch_gpt2`, `dense`, `GPT2CausalLM.call` (the tied head) | MKL runs at ~210 GFLOP/s on an AMD EPYC, oneDNN ~450: torch training 220 -> 360 tok/s, decoding 47 -> 55 / 175 -> 269 tok/s at batch 1 / 8; int8 on an AVX2-only CPU 4.2x `_int_mm` at batch 8 (`benchmarks/NOTES.md`) |
| `torch_int4` | torch: products with Keras' int4 kernels, dequantized (Keras' own formula) a block of weights at a time into one float buffer | `torch_gpt2` | int4 generation off Keras' per-layer path, which unpacks and dequantizes every kernel in ~10 ops per call and the whole embedding table for the LM head: GPT-2 base 0.5 -> 4.9 tok/s at batch 1 |
| `embedding` | all: an int4 token table's lookup takes the packed rows, then unpacks only those | `GPT2Backbone.embed` | Keras' unpacks the whole table per call: torch GPT-2 base int4 generation peak 467 -> 142 MB |
| `gradient_barrier` | JAX: the residual gradient materialized once per sub-block | `TransformerDecoder.call` | XLA stops re-fusing it into every later block |
| `dense` | all (helps XLA): the MLP on `(batch * seq, hidden)` rows; torch: float32 and int8 on `torch_matmul`; JAX/TF: int4 kernels and the tied int4 table dequantized without Keras' gather (a batch-8 JAX `generate()` took minutes); int8 layers as exact int8 products (JAX: on XLA's YNNPACK int8 GEMM, which reads the int8 kernel as stored; a single row padded to two); JAX on CPU: bfloat16/float16 layers on YNNPACK's half-precision GEMM the same way | `TransformerDecoder.call`, `CachedMultiHeadAttention.call`, `GPT2CausalLM.call_with_cache` | ~1.13x JAX training step; JAX int8 decoding 1.31x / 1.39x float32 at batch 1 / 8; JAX bfloat16 decoding 1.14x / 1.29x, training 1.12x |
| `loop_weights` | JAX on CPU: bfloat16/float16/int8 weights (except the half-precision kernels `dense` reads as stored) read per layer, fenced with the layer's input (TensorFlow: half-precision weights, kernels included, and int4 layers' weights); half-precision weights enter `generate()` as zero-copy bits; the tied LM head a vocabulary chunk at a time (`tied_logits`) | `GPT2Backbone.call_with_cache`, `GPT2CausalLM.call_with_cache`, `CausalLM`'s JAX and TensorFlow generate functions | XLA widens each layer's kernels when it runs, not all at once or hoisted: GPT-2 XL bfloat16 generation peak 10.1 -> 3.7 GB (JAX); TensorFlow GPT-2 base bfloat16 1487 -> 761 MB, int4 1070 -> 648 MB |
| `fused_adam` | torch, TensorFlow: Keras' Adam update in one fused kernel | `gpt2_lib.optimizers.Adam/AdamW.update_step` | ~0.6 s (torch) / ~0.2 s (TF) per GPT-2 base step |
| `compilation_cache` | JAX: XLA programs kept on disk (`gpt2_lib.enable_compilation_cache()`, on by default in the CLI) | process start-up | GPT-2 base first `generate()` of a new process 3.5 s -> 1.7 s (1.1 s of it decoding) |
| `tf_data` | TensorFlow: NumPy data without tf.data autotuning | `Task.fit/evaluate/predict` | no multi-second stall at the end of the call |

Measurements and what was tried: `benchmarks/NOTES.md`.
"""
