#!/usr/bin/env python3
"""Tiny random-weight reference models for Chrysalis (issue 13, item 4: "References, not guesses").

For each model family the engine must support, this script builds a tiny model with the
Hugging Face `transformers` classes, fills its weights from a fixed seed, saves it as a
Hugging Face directory (config.json, generation_config.json, model.safetensors) in f32 and
bf16, and records transformers' own logits and greedy tokens as fixtures.

Usage (from the repository root, with the pinned packages of README.md installed):

    python models/tests/data/tiny/make_tiny_models.py            # regenerate the fixtures in place
    python models/tests/data/tiny/make_tiny_models.py --out DIR  # write them elsewhere (same bytes)
    python models/tests/data/tiny/make_tiny_models.py --verify   # reload each directory, recompute,
                                                                 # compare with reference.json exactly
    python models/tests/data/tiny/make_tiny_models.py --numpy-check  # independent numpy forward pass
                                                                     # of llama3-f32 vs its fixture

The output is byte-for-byte deterministic for a given (torch, transformers) version pair: CPU
only, one thread, torch.use_deterministic_algorithms(True), fixed seeds, and nothing in the
fixtures depends on paths, time or the command line.
"""

import argparse
import hashlib
import json
import math
import os
import sys

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import (  # noqa: E402
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

HERE = os.path.dirname(os.path.abspath(__file__))
# Recorded in every reference.json; --out only changes where the files go, not their bytes.
COMMAND = "python models/tests/data/tiny/make_tiny_models.py"
SEED = 1313  # issue 13; each family adds its own offset below
PROMPT_LENGTHS = (5, 17, 40)  # 40 > Gemma's sliding window of 4 (and > llama3's 16-token high-freq wavelength)
MAX_NEW_TOKENS = 8
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16}

# Common tiny shape: vocab 256, hidden 64, intermediate 128, max positions 128.
COMMON = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    bos_token_id=None,
    eos_token_id=None,  # no stopping: generate always yields MAX_NEW_TOKENS tokens
    pad_token_id=None,
    use_cache=True,
)


def family_configs():
    """name -> (seed offset, model class, config). Fields are transformers 5.x's own."""
    llama3 = LlamaConfig(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA, 2 query heads per kv head; head_dim = 64/4 = 16
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        # Llama 3.1-style scaling. With head_dim 16 and theta 10000 the 8 rotary wavelengths are
        # 6.3, 19.9, 62.8, 199, ... so with original_max_position_embeddings 64, low 1, high 4
        # (thresholds 64 and 16) all three regimes occur: kept (6.3), smoothed (19.9, 62.8),
        # divided by factor (199 and up).
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    )
    qwen2 = Qwen2Config(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA; head_dim 16; q/k/v projections carry biases (Qwen2)
        hidden_act="silu",
        tie_word_embeddings=True,
        use_sliding_window=False,
        sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    qwen3 = Qwen3Config(
        **COMMON,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # != 64/4: q_proj is 64->128, o_proj 128->64
        hidden_act="silu",
        tie_word_embeddings=False,
        attention_bias=False,
        use_sliding_window=False,
        sliding_window=None,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    )
    gemma3 = Gemma3TextConfig(
        **COMMON,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,  # multi-query, as gemma-3-270m (4 heads, 1 kv head)
        head_dim=32,  # != 64/4
        hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True,
        attention_bias=False,
        # Deliberately != head_dim, so that using head_dim**-0.5 as the score scale is caught.
        query_pre_attn_scalar=48,
        sliding_window=4,
        # transformers 5.x expresses the local/global pattern as layer_types (the older
        # sliding_window_pattern=6 of the real checkpoints means 5 sliding then 1 full).
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        # As gemma-3-270m: no soft-capping in Gemma 3 (it uses q/k norms instead).
        final_logit_softcapping=None,
        attn_logit_softcapping=None,
        use_bidirectional_attention=False,
        rope_parameters={
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},  # rope_local_base_freq
            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},  # rope_theta
        },
    )
    return {
        "llama3": (1, LlamaForCausalLM, llama3),
        "qwen2": (2, Qwen2ForCausalLM, qwen2),
        "qwen3": (3, Qwen3ForCausalLM, qwen3),
        "gemma3": (4, Gemma3ForCausalLM, gemma3),
    }


WHAT = {
    "llama3": "LlamaForCausalLM: RMSNorm, SwiGLU, GQA 4q/2kv (head_dim 16), llama3 rope scaling "
    "(all three wavelength regimes), untied lm_head",
    "qwen2": "Qwen2ForCausalLM: q/k/v biases, GQA 4q/2kv (head_dim 16), rope_theta 1e6, tied embeddings",
    "qwen3": "Qwen3ForCausalLM: per-head q_norm/k_norm RMSNorm before rope, head_dim 32 != hidden/heads, "
    "GQA 4q/2kv, untied lm_head",
    "gemma3": "Gemma3ForCausalLM: (1+w) RMSNorms (input, post-attention, pre/post-feedforward, q/k norms, final), "
    "GeGLU gelu_pytorch_tanh, embeddings scaled by sqrt(64)=8, query_pre_attn_scalar 48 != head_dim 32, "
    "MQA 4q/1kv, layers 0-1 sliding window 4 with rope theta 1e4, layer 2 global with rope theta 1e6, "
    "no soft-capping, tied embeddings",
}


def setup_torch():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()


def randomize_(model, family, seed):
    """Overwrite every parameter with seeded values of a useful size.

    transformers' own init (std 0.02 and unit or zero norms) would make every norm weight trivial,
    so a loader that skipped or misread a norm would still match; here every tensor is distinct.
    """
    gen = torch.Generator().manual_seed(seed)
    gemma = family == "gemma3"
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            shape = tuple(p.shape)
            noise = torch.randn(shape, generator=gen, dtype=torch.float32)
            if name.endswith("norm.weight"):
                # Gemma's RMSNorm multiplies by (1 + w): store w near 0, except in the two norms
                # on the residual branches' outputs (w near 1, so each branch adds about twice the
                # embedding's size and greedy decoding does not just echo the last token).
                # Other families multiply by w.
                if gemma:
                    post = name.endswith(("post_attention_layernorm.weight", "post_feedforward_layernorm.weight"))
                    val = (1.0 if post else 0.0) + 0.2 * noise
                else:
                    val = 1.0 + 0.2 * noise
            elif name.endswith(".bias"):
                val = 0.2 * noise
            elif "embed_tokens" in name:
                # Gemma scales embeddings by sqrt(hidden): std 1/8 gives unit rows after scaling.
                # A smaller std for the other families keeps the residual stream from being
                # dominated by the input token's own embedding (with tied embeddings that makes
                # greedy decoding repeat the last token forever).
                val = noise * (1.0 / math.sqrt(shape[1]) if gemma else 0.25)
            elif p.dim() == 2:
                # nn.Linear weight is [out, in]; outputs into the residual stream get gain 2.
                gain = 2.0 if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                val = noise * (gain / math.sqrt(shape[1]))
            else:
                raise RuntimeError(f"unexpected parameter {name} {shape}")
            p.copy_(val)


def greedy(model, ids):
    """8 greedy tokens from generate() and, per step, (top1 - top2) / std of that step's logits."""
    x = torch.tensor([ids], dtype=torch.int64)
    with torch.no_grad():
        gen = model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=MAX_NEW_TOKENS,
            min_new_tokens=MAX_NEW_TOKENS,
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    new = gen.sequences[0, len(ids):].tolist()
    if len(new) != MAX_NEW_TOKENS:
        raise RuntimeError(f"generate stopped early: {new}")
    margins, rel = [], []
    for step_logits, tok in zip(gen.logits, new):
        s = step_logits[0].to(torch.float32)
        if int(torch.argmax(s)) != tok:
            raise RuntimeError("generate's token is not the argmax of its logits")
        top2 = torch.topk(s, 2).values
        margins.append(float(top2[0] - top2[1]))
        rel.append(float((top2[0] - top2[1]) / s.std()))
    return new, margins, rel


# Prompts are drawn from a seeded generator, candidate after candidate, and the first candidate
# of each length is kept whose 8 greedy tokens (a) are the same for f32 weights, for bf16 weights
# run in bf16 and for bf16 weights run in f32, (b) have at every step a top1-top2 gap of at least
# MIN_REL_MARGIN standard deviations of that step's logits in all three, and (c) hold at least
# MIN_DISTINCT distinct tokens. A reimplementation within the logit tolerance then cannot flip a
# greedy token by rounding alone, and the fixture is not a degenerate loop.
MIN_REL_MARGIN = 0.1
MAX_CANDIDATES = 200
MIN_DISTINCT = 4  # distinct tokens among the 8 greedy ones


def choose_prompts(models, family_seed, vocab):
    gen = torch.Generator().manual_seed(family_seed + 1000)
    prompts, tried = [], {}
    for n in PROMPT_LENGTHS:
        for _ in range(MAX_CANDIDATES):
            ids = torch.randint(0, vocab, (n,), generator=gen, dtype=torch.int64).tolist()
            runs = [greedy(m, ids) for m in models]
            toks = {tuple(r[0]) for r in runs}
            tried[n] = tried.get(n, 0) + 1
            if (len(toks) == 1 and len(set(runs[0][0])) >= MIN_DISTINCT
                    and min(min(r[2]) for r in runs) >= MIN_REL_MARGIN):
                prompts.append(ids)
                break
        else:
            raise RuntimeError(f"no prompt of length {n} met the margin rule")
    print(f"  candidates tried per prompt length: {tried}", flush=True)
    return prompts


def f32_list(t):
    """Floats whose shortest decimal forms parse back to exactly these f32 values."""
    a = t.detach().to(torch.float32).cpu().numpy().astype(np.float32).reshape(-1)
    return [f32(x) for x in a]


def f32(x):
    """A float whose shortest repr is the shortest decimal of the f32 nearest x."""
    return float(str(np.float32(x)))


def load(cls, directory, dtype):
    model = cls.from_pretrained(directory, dtype=dtype, attn_implementation="eager")
    model.eval()
    return model


def run_references(model, prompts):
    out = []
    logits0 = None
    logits_dtype = None
    with torch.no_grad():
        for i, ids in enumerate(prompts):
            x = torch.tensor([ids], dtype=torch.int64)
            logits = model(input_ids=x, use_cache=False).logits[0]  # [seq, vocab]
            logits_dtype = str(logits.dtype).removeprefix("torch.")
            if i == 0:
                logits0 = logits.to(torch.float32).contiguous()
            new, margins, rel = greedy(model, ids)
            last = logits[-1]
            out.append(
                {
                    "input_ids": ids,
                    "last_logits": f32_list(last),
                    "last_argmax": int(torch.argmax(last.to(torch.float32))),
                    "greedy_tokens": new,
                    # top1 - top2 of generate's own step logits (model dtype, with KV cache):
                    # how much room a reimplementation has before a greedy token flips.
                    "greedy_top2_margins": [f32(m) for m in margins],
                    "greedy_top2_margins_in_std": [f32(m) for m in rel],
                }
            )
    return out, logits0, logits_dtype


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def generate(out_root):
    setup_torch()
    for family, (off, cls, config) in family_configs().items():
        fseed = SEED + off
        torch.manual_seed(fseed)
        base = cls(config)
        randomize_(base, family, fseed)
        base.eval()
        dirs = {dname: os.path.join(out_root, f"{family}-{dname}") for dname in DTYPES}
        for dname, dtype in DTYPES.items():
            os.makedirs(dirs[dname], exist_ok=True)
            m = base.to(dtype) if dtype != torch.float32 else base
            m.generation_config = GenerationConfig(
                do_sample=False, bos_token_id=None, eos_token_id=None, pad_token_id=None
            )
            m.save_pretrained(dirs[dname], safe_serialization=True)
        del base
        # Everything below runs on the directories as saved (what the Rust loader will read):
        # f32 weights; bf16 weights computed in bf16 (as transformers runs them); bf16 weights
        # widened to f32 and computed in f32 (as an engine with f32 activations runs them).
        prompts = choose_prompts(
            [load(cls, dirs["f32"], torch.float32), load(cls, dirs["bf16"], torch.bfloat16),
             load(cls, dirs["bf16"], torch.float32)],
            fseed, config.vocab_size)
        for dname, dtype in DTYPES.items():
            d = dirs[dname]
            # Reference from the directory as saved (what the Rust loader will read).
            model = load(cls, d, dtype)
            results, logits0, logits_dtype = run_references(model, prompts)
            bin_name = "logits_prompt0.f32"
            with open(os.path.join(d, bin_name), "wb") as f:
                f.write(logits0.numpy().astype("<f4").tobytes())
            extra = {}
            if dtype != torch.float32:
                # Same bf16 weights, widened exactly to f32 and computed in f32.
                wide = load(cls, d, torch.float32)
                res32, logits0_32, _ = run_references(wide, prompts)
                del wide
                for r, q in zip(results, res32):
                    if q["greedy_tokens"] != r["greedy_tokens"]:
                        raise RuntimeError("f32-compute greedy tokens differ from bf16 ones")
                    r["last_logits_f32_compute"] = q["last_logits"]
                bin32 = "logits_prompt0_f32_compute.f32"
                with open(os.path.join(d, bin32), "wb") as f:
                    f.write(logits0_32.numpy().astype("<f4").tobytes())
                extra["f32_compute"] = {
                    "what": "the same bf16 weights loaded with dtype=float32 (exact widening) and run in "
                    "float32: prompts[i].last_logits_f32_compute and this all-positions file; greedy "
                    "tokens are identical to the bf16 ones",
                    "all_positions_logits_prompt0": {
                        "file": bin32,
                        "format": "little-endian float32, row-major",
                        "shape": list(logits0_32.shape),
                        "sha256": sha256(os.path.join(d, bin32)),
                    },
                }
            ref = {
                "family": family,
                "hf_class": cls.__name__,
                "what_it_exercises": WHAT[family],
                "weights_dtype": {"f32": "float32", "bf16": "bfloat16"}[dname],
                "compute_dtype": str(dtype).removeprefix("torch."),
                "logits_dtype": logits_dtype,
                "logits_stored_as": "float32 (bf16 logits widened exactly)",
                "attn_implementation": "eager",
                "seed": fseed,
                "transformers_version": transformers.__version__,
                "torch_version": torch.__version__.split("+")[0],
                "command": COMMAND,
                "num_parameters": sum(p.numel() for p in model.parameters()),
                "max_new_tokens": MAX_NEW_TOKENS,
                "greedy": "model.generate(do_sample=False, max_new_tokens=8), KV cache, eos_token_id=None",
                "prompt_rule": f"first seeded candidate per length with the same greedy tokens from f32 weights, bf16 "
                f"weights in bf16 and bf16 weights in f32, at least "
                f"{MIN_DISTINCT} distinct greedy tokens, every step's top1-top2 gap >= {MIN_REL_MARGIN} std of its logits",
                "tolerance": {
                    "last_logits_relative_l2": 1e-3 if dname == "f32" else 1e-2,
                    "greedy_tokens": "equal",
                } if dname == "f32" else {
                    "last_logits_relative_l2": 1e-2,
                    "last_logits_f32_compute_relative_l2": 1e-3,
                    "greedy_tokens": "equal",
                    "note": "last_logits is torch's bf16 arithmetic, which is itself about 0.9e-2 to 1.5e-2 "
                    "(relative L2, all four families) from the same bf16 weights run in f32: an engine "
                    "that keeps activations in f32 is held to last_logits_f32_compute (1e-3); only an "
                    "engine rounding like torch can expect 1e-2 against last_logits",
                },
                "all_positions_logits_prompt0": {
                    "file": bin_name,
                    "format": "little-endian float32, row-major",
                    "shape": list(logits0.shape),
                    "sha256": sha256(os.path.join(d, bin_name)),
                },
                **extra,
                "prompts": results,
            }
            with open(os.path.join(d, "reference.json"), "w") as f:
                json.dump(ref, f, indent=1)
                f.write("\n")
            print(f"{family}-{dname}: {ref['num_parameters']} params, greedy "
                  f"{[r['greedy_tokens'] for r in results]}, min margin "
                  f"{min(min(r['greedy_top2_margins']) for r in results):.4g}", flush=True)
            del model


def verify(root):
    """Reload each directory from scratch, recompute, compare with the fixtures bit for bit."""
    setup_torch()
    fams = family_configs()
    ok = True
    for family, (off, cls, _config) in fams.items():
        for dname, dtype in DTYPES.items():
            d = os.path.join(root, f"{family}-{dname}")
            with open(os.path.join(d, "reference.json")) as f:
                ref = json.load(f)
            model = load(cls, d, dtype)
            assert str(next(model.parameters()).dtype) == f"torch.{ref['compute_dtype']}"
            prompts = [p["input_ids"] for p in ref["prompts"]]
            results, logits0, _ = run_references(model, prompts)
            for r, p in zip(results, ref["prompts"]):
                a = np.array(r["last_logits"], dtype=np.float32)
                b = np.array(p["last_logits"], dtype=np.float32)
                same = a.tobytes() == b.tobytes() and r["greedy_tokens"] == p["greedy_tokens"]
                ok &= same
                print(f"{family}-{dname} len {len(p['input_ids'])}: last logits "
                      f"{'identical' if a.tobytes() == b.tobytes() else 'DIFFER max %g' % np.abs(a - b).max()}, "
                      f"greedy {'equal' if r['greedy_tokens'] == p['greedy_tokens'] else 'DIFFER'}")
            meta = ref["all_positions_logits_prompt0"]
            stored = np.fromfile(os.path.join(d, meta["file"]), dtype="<f4").reshape(meta["shape"])
            same0 = stored.tobytes() == logits0.numpy().astype("<f4").tobytes()
            same_last = stored[-1].tobytes() == np.array(ref["prompts"][0]["last_logits"], dtype=np.float32).tobytes()
            ok &= same0 and same_last
            print(f"{family}-{dname}: all-position logits {'identical' if same0 else 'DIFFER'}, "
                  f"last row == JSON {'yes' if same_last else 'NO'}")
            if dname == "bf16":
                wide = load(cls, d, torch.float32)
                res32, logits0_32, _ = run_references(wide, prompts)
                for r, p in zip(res32, ref["prompts"]):
                    a = np.array(r["last_logits"], dtype=np.float32)
                    b = np.array(p["last_logits_f32_compute"], dtype=np.float32)
                    c = np.array(p["last_logits"], dtype=np.float64)
                    same = a.tobytes() == b.tobytes() and r["greedy_tokens"] == p["greedy_tokens"]
                    ok &= same
                    print(f"   f32-compute len {len(p['input_ids'])}: last logits "
                          f"{'identical' if a.tobytes() == b.tobytes() else 'DIFFER'}, greedy == bf16 "
                          f"{r['greedy_tokens'] == p['greedy_tokens']}, rel L2 to bf16 compute "
                          f"{np.linalg.norm(b - c) / np.linalg.norm(b):.3e}")
                meta = ref["f32_compute"]["all_positions_logits_prompt0"]
                stored = np.fromfile(os.path.join(d, meta["file"]), dtype="<f4").reshape(meta["shape"])
                same0 = stored.tobytes() == logits0_32.numpy().astype("<f4").tobytes()
                ok &= same0
                print(f"   f32-compute all-position logits {'identical' if same0 else 'DIFFER'}")
                f32 = json.load(open(os.path.join(root, f"{family}-f32", "reference.json")))
                for p, q in zip(ref["prompts"], f32["prompts"]):
                    a = np.array(p["last_logits"], dtype=np.float64)
                    b = np.array(q["last_logits"], dtype=np.float64)
                    e = np.array(p["last_logits_f32_compute"], dtype=np.float64)
                    print(f"   vs f32 weights len {len(p['input_ids'])}: rel L2 bf16-compute "
                          f"{np.linalg.norm(a - b) / np.linalg.norm(b):.3e}, f32-compute "
                          f"{np.linalg.norm(e - b) / np.linalg.norm(b):.3e}, greedy equal "
                          f"{p['greedy_tokens'] == q['greedy_tokens']}")
    # Sensitivity: the fixtures must tell apart the features they claim to exercise.
    for family, tweak in (("gemma3", "no_sliding"), ("llama3", "no_rope_scaling"), ("gemma3", "head_dim_scale")):
        off, cls, _ = fams[family]
        d = os.path.join(root, f"{family}-f32")
        ref = json.load(open(os.path.join(d, "reference.json")))
        cfg = cls.config_class.from_pretrained(d)
        if tweak == "no_sliding":
            cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
        elif tweak == "no_rope_scaling":
            cfg.rope_parameters = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"]}
        else:
            cfg.query_pre_attn_scalar = cfg.head_dim
        model = cls.from_pretrained(d, config=cfg, dtype=torch.float32, attn_implementation="eager").eval()
        for p in ref["prompts"]:
            with torch.no_grad():
                lg = model(input_ids=torch.tensor([p["input_ids"]])).logits[0, -1].double().numpy()
            b = np.array(p["last_logits"], dtype=np.float64)
            print(f"sensitivity {family} {tweak} len {len(p['input_ids'])}: rel L2 "
                  f"{np.linalg.norm(lg - b) / np.linalg.norm(b):.3e}")
    print("VERIFY", "OK" if ok else "FAILED")
    return ok


def numpy_check(root):
    """Independent float64 numpy forward pass of llama3-f32 from the safetensors file."""
    from safetensors.numpy import load_file

    d = os.path.join(root, "llama3-f32")
    cfg = json.load(open(os.path.join(d, "config.json")))
    ref = json.load(open(os.path.join(d, "reference.json")))
    w = {k: v.astype(np.float64) for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    H, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = cfg.get("head_dim") or H // nh
    eps = cfg["rms_norm_eps"]
    rp = cfg.get("rope_parameters") or dict(cfg["rope_scaling"], rope_theta=cfg["rope_theta"])
    # Llama 3.1 rope frequencies, written from the published formula.
    inv = 1.0 / rp["rope_theta"] ** (np.arange(0, hd, 2) / hd)
    wl = 2 * np.pi / inv
    lo_wl = rp["original_max_position_embeddings"] / rp["low_freq_factor"]
    hi_wl = rp["original_max_position_embeddings"] / rp["high_freq_factor"]
    smooth = (rp["original_max_position_embeddings"] / wl - rp["low_freq_factor"]) / (
        rp["high_freq_factor"] - rp["low_freq_factor"])
    inv = np.where(wl < hi_wl, inv, np.where(wl > lo_wl, inv / rp["factor"],
                                             (1 - smooth) * inv / rp["factor"] + smooth * inv))

    def rms(x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g

    def rope(x, pos):  # x [heads, seq, hd], rotate-half convention
        ang = pos[:, None] * inv[None, :]
        cos, sin = np.cos(np.concatenate([ang, ang], -1)), np.sin(np.concatenate([ang, ang], -1))
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        return x * cos + np.concatenate([-x2, x1], -1) * sin

    worst = 0.0
    for p in ref["prompts"]:
        ids = np.array(p["input_ids"])
        T = len(ids)
        pos = np.arange(T, dtype=np.float64)
        h = w["model.embed_tokens.weight"][ids]
        for L in range(cfg["num_hidden_layers"]):
            pre = f"model.layers.{L}."
            x = rms(h, w[pre + "input_layernorm.weight"])
            q = (x @ w[pre + "self_attn.q_proj.weight"].T).reshape(T, nh, hd).transpose(1, 0, 2)
            k = (x @ w[pre + "self_attn.k_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
            v = (x @ w[pre + "self_attn.v_proj.weight"].T).reshape(T, nkv, hd).transpose(1, 0, 2)
            q, k = rope(q, pos), rope(k, pos)
            k, v = np.repeat(k, nh // nkv, 0), np.repeat(v, nh // nkv, 0)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
            s = s + np.triu(np.full((T, T), -np.inf), 1)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = (s @ v).transpose(1, 0, 2).reshape(T, nh * hd)
            h = h + a @ w[pre + "self_attn.o_proj.weight"].T
            x = rms(h, w[pre + "post_attention_layernorm.weight"])
            g = x @ w[pre + "mlp.gate_proj.weight"].T
            u = x @ w[pre + "mlp.up_proj.weight"].T
            h = h + (g / (1 + np.exp(-g)) * u) @ w[pre + "mlp.down_proj.weight"].T
        logits = rms(h, w["model.norm.weight"]) @ w["lm_head.weight"].T
        b = np.array(p["last_logits"], dtype=np.float64)
        diff = np.abs(logits[-1] - b).max()
        rel = np.linalg.norm(logits[-1] - b) / np.linalg.norm(b)
        worst = max(worst, diff)
        print(f"numpy llama3-f32 len {T}: max |numpy - transformers| {diff:.3e} "
              f"(max |logit| {np.abs(b).max():.3g}, rel L2 {rel:.3e})")
        if T == len(ref["prompts"][0]["input_ids"]):
            meta = ref["all_positions_logits_prompt0"]
            allpos = np.fromfile(os.path.join(d, meta["file"]), dtype="<f4").reshape(meta["shape"])
            print(f"numpy llama3-f32 prompt0 all positions: max diff {np.abs(logits - allpos).max():.3e}")
            worst = max(worst, np.abs(logits - allpos).max())
    print(f"NUMPY_CHECK max abs diff {worst:.3e}")
    return worst < 1e-4


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=HERE, help="output root (default: this script's directory)")
    ap.add_argument("--verify", action="store_true", help="check the fixtures under --out instead of writing")
    ap.add_argument("--numpy-check", action="store_true", help="numpy cross-check of llama3-f32 under --out")
    args = ap.parse_args()
    if args.verify or args.numpy_check:
        ok = True
        if args.verify:
            ok &= verify(args.out)
        if args.numpy_check:
            ok &= numpy_check(args.out)
        sys.exit(0 if ok else 1)
    generate(args.out)


if __name__ == "__main__":
    main()
