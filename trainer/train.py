"""One trial: train a small GPT for a fixed budget (wall-clock seconds, or tokens), then report val_bpb.

This is the file the research agent edits. Everything else (data, tokenizer, sequence length,
evaluation) is fixed in prepare.py, so a lower val_bpb means a better training recipe for this
time budget on this machine. Read top to bottom: hyperparameters, model, optimizers, device
setup, training loop, summary.

Run: `python trainer/train.py` (after `autoresearch prepare`). Environment (set by the supervisor):
AUTORESEARCH_CACHE, AUTORESEARCH_TIME_BUDGET, AUTORESEARCH_BUDGET_TOKENS, AUTORESEARCH_METRICS,
AUTORESEARCH_SEED, AUTORESEARCH_MODEL_OUT, AUTORESEARCH_DEVICE (auto|cuda|mps|cpu).

The budget is seconds of training (prepare.time_budget()) unless the run gives one in tokens
(prepare.token_budget(), `autoresearch run --budget-tokens N`): then the loop stops once it has trained
on that many tokens, however long it took, and the schedule follows tokens instead of seconds.

Output: one JSON line of metrics per optimizer step (to $AUTORESEARCH_METRICS, or stdout), then a
line `---` and the summary as `key: value` lines on stdout. A NaN or exploding loss prints a line
starting with `FAIL:` and exits with status 1.
"""

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

T_START = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the harness beside this file, never a package

import prepare  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from prepare import (  # noqa: E402
    MAX_SEQ_LEN,
    PROFILE,
    VOCAB_SIZE,
    hand_over,
    make_dataloader,
    peak_flops,
    time_budget,
)

# ---------------------------------------------------------------------------------------------
# Hyperparameters. One per line, `NAME = literal  # comment`; the sizes depend on the cache's
# profile ("full" for large GPUs, "small" for CPU / MPS / small GPUs) and are chosen per profile.
# ---------------------------------------------------------------------------------------------

# Model shape.
# number of transformer blocks
DEPTH = {"full": 8, "small": 4}[PROFILE]
# width of the residual stream
MODEL_DIM = {"full": 512, "small": 128}[PROFILE]
# dimension of one attention head (heads = MODEL_DIM // HEAD_DIM)
HEAD_DIM = {"full": 128, "small": 64}[PROFILE]
MLP_RATIO = 4  # hidden width of the MLP as a multiple of MODEL_DIM
WINDOW_PATTERN = "L"  # attention span per layer, repeated over depth: L = full causal, S = SHORT_WINDOW tokens
# tokens a short-window (S) layer attends to, itself included
SHORT_WINDOW = {"full": 512, "small": 64}[PROFILE]
ROPE_BASE = 10000.0  # rotary embedding base frequency
LOGIT_SOFTCAP = 15.0  # logits are squashed to (-cap, cap) with tanh

# Optimization.
# tokens per optimizer step (gradient accumulation makes up the difference)
TOTAL_BATCH_TOKENS = {"full": 524288, "small": 4096}[PROFILE]
# sequences per forward/backward pass
DEVICE_BATCH_SIZE = {"full": 16, "small": 16}[PROFILE]
MATRIX_LR = 0.04  # Muon learning rate for the 2-D weights of the blocks
EMBEDDING_LR = 0.6  # AdamW learning rate for the token embedding
# AdamW learning rate for lm_head (a small model on a short budget takes a larger one)
UNEMBEDDING_LR = {"full": 0.004, "small": 0.02}[PROFILE]
SCALAR_LR = 0.02  # AdamW learning rate for the per-layer residual scalars
ADAM_BETA1 = 0.8  # AdamW first-moment decay
ADAM_BETA2 = 0.95  # AdamW second-moment decay
WEIGHT_DECAY = 0.0  # decoupled weight decay on the Muon matrices
MUON_MOMENTUM = 0.95  # Nesterov momentum of Muon
NS_STEPS = 5  # Newton-Schulz iterations that orthogonalize each Muon update
WARMUP_FRACTION = 0.0  # share of the budget (seconds, or tokens) spent ramping the learning rates up from 0
WARMDOWN_FRACTION = 0.5  # share of the budget at the end spent decaying the learning rates
FINAL_LR_FRACTION = 0.0  # learning rate at the end of the budget, as a fraction of the peak
COMPILE = "auto"  # torch.compile: "auto" = on for CUDA/ROCm, off elsewhere; True or False to force

# ---------------------------------------------------------------------------------------------
# Model: GPT with rotary embeddings, QK-norm, ReLU^2 MLP, untied soft-capped head.
# ---------------------------------------------------------------------------------------------


def norm(x):
    """RMSNorm without a learned scale (the weights after it can scale)."""
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(seq_len, head_dim, base):
    """cos and sin of the rotary angles, shape (seq_len, 1, head_dim // 2)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32), inv_freq)
    return angles.cos()[:, None, :], angles.sin()[:, None, :]


def apply_rotary(x, cos, sin):
    """Rotate pairs (x1[i], x2[i]) of each head vector by a position-dependent angle. x: (B, T, H, D)."""
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, dim, n_head, head_dim):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.c_q = nn.Linear(dim, n_head * head_dim, bias=False)
        self.c_k = nn.Linear(dim, n_head * head_dim, bias=False)
        self.c_v = nn.Linear(dim, n_head * head_dim, bias=False)
        self.c_proj = nn.Linear(n_head * head_dim, dim, bias=False)

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
        k = self.c_k(x).view(B, T, self.n_head, self.head_dim)
        v = self.c_v(x).view(B, T, self.n_head, self.head_dim)
        # QK-norm: unit-RMS queries and keys keep attention logits bounded whatever the weights do.
        q = norm(apply_rotary(q, cos, sin)).to(v.dtype)
        k = norm(apply_rotary(k, cos, sin)).to(v.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, D)
        if mask is None:  # full causal attention: SDPA picks its fastest (flash) kernel
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # sliding window: an explicit boolean mask (True = may attend), honoured on every device
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.c_fc(x)).square())  # ReLU^2


class Block(nn.Module):
    def __init__(self, dim, n_head, head_dim, hidden, window):
        super().__init__()
        self.window = window  # None = full causal attention
        self.attn = CausalSelfAttention(dim, n_head, head_dim)
        self.mlp = MLP(dim, hidden)

    def forward(self, x, cos, sin, mask):
        x = x + self.attn(norm(x), cos, sin, mask)
        return x + self.mlp(norm(x))


def layer_windows(pattern, depth, short_window):
    """WINDOW_PATTERN repeated over the layers; the last layer always sees the full context."""
    if not pattern or set(pattern) - {"S", "L"}:
        raise ValueError(f"WINDOW_PATTERN must be made of S and L, got {pattern!r}")
    windows = [short_window if pattern[i % len(pattern)] == "S" else None for i in range(depth)]
    windows[-1] = None
    return windows


class GPT(nn.Module):
    def __init__(self, vocab_size, dim, depth, head_dim, mlp_ratio, windows, max_seq_len):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"MODEL_DIM {dim} is not a multiple of HEAD_DIM {head_dim}")
        self.vocab_size, self.depth, self.head_dim = vocab_size, depth, head_dim
        self.n_head = dim // head_dim
        self.windows = windows
        self.wte = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList(
            Block(dim, self.n_head, head_dim, mlp_ratio * dim, w) for w in windows
        )
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)  # untied from wte
        # Learned per-layer mix of the residual stream and the (normed) input embedding x0.
        self.resid_lambdas = nn.Parameter(torch.ones(depth))
        self.x0_lambdas = nn.Parameter(torch.zeros(depth))
        cos, sin = rotary_tables(max_seq_len, head_dim, ROPE_BASE)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        for w in sorted({w for w in windows if w is not None}):  # True where a query may attend to a key
            pos = torch.arange(max_seq_len)
            dist = pos[:, None] - pos[None, :]  # query position minus key position
            self.register_buffer(f"window_mask_{w}", (dist >= 0) & (dist < w), persistent=False)

    @torch.no_grad()
    def init_weights(self):
        self.wte.weight.normal_(0.0, 1.0)  # normed right after the lookup, so the scale is free
        self.lm_head.weight.normal_(0.0, 0.001)  # near-uniform predictions at the start
        bound = math.sqrt(3.0 / self.wte.embedding_dim)  # uniform with std 1/sqrt(dim)
        for block in self.blocks:
            for lin in (block.attn.c_q, block.attn.c_k, block.attn.c_v, block.mlp.c_fc):
                lin.weight.uniform_(-bound, bound)
            block.attn.c_proj.weight.zero_()  # every block starts as the identity
            block.mlp.c_proj.weight.zero_()
        self.resid_lambdas.fill_(1.0)
        self.x0_lambdas.fill_(0.0)

    def forward(self, idx, targets=None, reduction="mean"):
        B, T = idx.shape
        cos, sin = self.cos[:T], self.sin[:T]
        x = x0 = norm(self.wte(idx))
        for i, block in enumerate(self.blocks):
            short = block.window is not None and block.window < T
            mask = getattr(self, f"window_mask_{block.window}")[:T, :T] if short else None
            x = self.resid_lambdas[i] * x + self.x0_lambdas[i] * x0
            x = block(x, cos, sin, mask)
        logits = self.lm_head(norm(x)).float()
        logits = LOGIT_SOFTCAP * torch.tanh(logits / LOGIT_SOFTCAP)
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)
        return loss.view(B, T) if reduction == "none" else loss

    def matmul_params(self):
        """Parameters used in matrix multiplies (blocks and lm_head; the embedding is a lookup)."""
        return sum(p.numel() for p in self.blocks.parameters() if p.dim() == 2) + self.lm_head.weight.numel()

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 * N_matmul (forward 2, backward 4 FLOPs per weight) plus the
        attention scores and weighted sum, 12 * H * Dh * T per layer (T = the span a layer attends
        to, so short-window layers count their window)."""
        attn = sum(12 * self.n_head * self.head_dim * min(w or seq_len, seq_len) for w in self.windows)
        return 6 * self.matmul_params() + attn


# ---------------------------------------------------------------------------------------------
# Optimizers: Muon for the block matrices, AdamW for embeddings, lm_head and scalars.
# ---------------------------------------------------------------------------------------------


def newton_schulz(G, steps):
    """Approximately orthogonalize G (the nearest semi-orthogonal matrix, U V^T of its SVD) with a
    quintic Newton-Schulz iteration; coefficients chosen for fast convergence of small singular
    values rather than exactness (singular values end near 1, roughly in 0.7..1.2). Batched over
    leading dimensions. Runs in bf16 on GPUs (cheap, accurate enough) and fp32 elsewhere."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = G.bfloat16() if G.is_cuda else G.float()
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the wide orientation, where X @ X^T is the smaller product
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    if transposed:
        X = X.mT
    return X


class Muon(torch.optim.Optimizer):
    """Momentum, then orthogonalization: every update has all singular values near 1, so each
    direction of a weight matrix moves at the same rate. Nesterov momentum; updates are scaled by
    sqrt(max(1, rows / cols)) so tall matrices get a comparable per-element step. Parameters of
    the same shape are orthogonalized together in one batched iteration."""

    def __init__(self, params, lr, momentum, ns_steps, weight_decay):
        super().__init__(params, dict(lr=lr, momentum=momentum, ns_steps=ns_steps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, params in by_shape.items():
                updates = []
                for p in params:
                    buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                    buf.lerp_(p.grad, 1 - group["momentum"])
                    updates.append(p.grad.lerp(buf, group["momentum"]))  # Nesterov look-ahead
                ortho = newton_schulz(torch.stack(updates), group["ns_steps"])
                scale = max(1.0, shape[0] / shape[1]) ** 0.5
                for p, u in zip(params, ortho, strict=True):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    p.add_(u.to(p.dtype), alpha=-group["lr"] * scale)


def build_optimizers(model, device):
    matrices = [p for p in model.blocks.parameters() if p.dim() == 2]
    scalars = [model.resid_lambdas, model.x0_lambdas]
    adam_groups = [
        dict(params=[model.wte.weight], lr=EMBEDDING_LR),
        dict(params=[model.lm_head.weight], lr=UNEMBEDDING_LR),
        dict(params=scalars, lr=SCALAR_LR),
    ]
    assert sum(p.numel() for g in adam_groups for p in g["params"]) + sum(p.numel() for p in matrices) == sum(
        p.numel() for p in model.parameters()
    ), "every parameter must belong to exactly one optimizer"
    adamw = torch.optim.AdamW(adam_groups, betas=(ADAM_BETA1, ADAM_BETA2), eps=1e-10, weight_decay=0.0,
                              fused=device.type == "cuda")
    muon = Muon(matrices, lr=MATRIX_LR, momentum=MUON_MOMENTUM, ns_steps=NS_STEPS, weight_decay=WEIGHT_DECAY)
    optimizers = [adamw, muon]
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers


def lr_multiplier(progress):
    """Learning-rate multiplier at `progress` = share of the budget spent (0..1): warmup, flat, warmdown."""
    if WARMUP_FRACTION > 0 and progress < WARMUP_FRACTION:
        return progress / WARMUP_FRACTION
    if WARMDOWN_FRACTION <= 0 or progress < 1 - WARMDOWN_FRACTION:
        return 1.0
    left = max(0.0, 1 - progress) / WARMDOWN_FRACTION  # 1 at the start of the warmdown, 0 at the end
    return left + (1 - left) * FINAL_LR_FRACTION


# ---------------------------------------------------------------------------------------------
# Device, precision and compile (the peak FLOP/s that MFU is measured against is the harness's).
# ---------------------------------------------------------------------------------------------

def setup_device():
    """(device, autocast context, description, compile on?, why not) from AUTORESEARCH_DEVICE."""
    want = os.environ.get("AUTORESEARCH_DEVICE", "auto").strip().lower() or "auto"
    if want not in ("auto", "cuda", "rocm", "mps", "cpu"):
        raise ValueError(f"AUTORESEARCH_DEVICE must be auto, cuda, mps or cpu, got {want!r}")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if want in ("cuda", "rocm"):
        if not torch.cuda.is_available():
            raise ValueError("AUTORESEARCH_DEVICE asks for cuda but torch.cuda.is_available() is False")
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        kind = "rocm" if torch.version.hip else "cuda"
        name = torch.cuda.get_device_name(device)
        if torch.cuda.is_bf16_supported():
            autocast, precision = torch.autocast("cuda", dtype=torch.bfloat16), "bf16 autocast"
        else:
            autocast, precision = nullcontext(), "float32 (no bf16 on this GPU)"
    elif want == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError("AUTORESEARCH_DEVICE asks for mps but torch.backends.mps.is_available() is False")
        device, kind, name = torch.device("mps"), "mps", "Apple MPS"
        autocast, precision = nullcontext(), "float32"
    else:
        device, kind = torch.device("cpu"), "cpu"
        name = f"CPU ({torch.get_num_threads()} threads)"
        autocast, precision = nullcontext(), "float32"

    if COMPILE is True or COMPILE is False:
        use_compile, why = COMPILE, "" if COMPILE else "COMPILE = False"
    elif kind in ("cuda", "rocm"):
        use_compile, why = True, ""
    else:
        use_compile, why = False, f"off by default on {kind} (set COMPILE = True to try)"
    if use_compile and kind in ("cuda", "rocm"):
        try:
            from torch.utils._triton import has_triton

            if not has_triton():
                use_compile, why = False, "triton is not available, so inductor cannot compile for this GPU"
        except ImportError:
            pass
    return device, kind, name, autocast, precision, use_compile, why


def memory_mb(kind):
    if kind in ("cuda", "rocm"):
        return torch.cuda.max_memory_allocated() / 2**20
    if kind == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    return None


def fail(message):
    """A trial that cannot go on: one `FAIL:` line the supervisor records, exit status 1."""
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


# ---------------------------------------------------------------------------------------------
# The trial.
# ---------------------------------------------------------------------------------------------


def read_settings():
    """(time budget, token budget or None, seed) from the environment, after checking that the data cache
    is ready."""
    budget = time_budget()
    budget_tokens = prepare.token_budget()
    raw_seed = os.environ.get("AUTORESEARCH_SEED", "").strip() or "42"
    if not raw_seed.lstrip("-").isdigit():
        raise ValueError(f"AUTORESEARCH_SEED must be an integer, got {raw_seed!r}")
    prepare.load_manifest()
    return budget, budget_tokens, int(raw_seed)


def budget_progress(training_seconds, budget, tokens, budget_tokens):
    """Share of the budget spent (0..1): tokens trained of the token budget when there is one (speed then
    does not count), else training seconds of the time budget."""
    if budget_tokens is not None:
        return min(tokens / budget_tokens, 1.0) if budget_tokens > 0 else 1.0
    return min(training_seconds / budget, 1.0) if budget > 0 else 1.0


def budget_spent(step, excluded_steps, training_seconds, budget, tokens, budget_tokens, tokens_per_pass):
    """Whether the loop must stop before another step. A token budget is spent when not one more whole
    pass fits in it (warm-up steps count too); a time budget counts only the timed steps after the warm-up."""
    if budget_tokens is not None:
        return budget_tokens - tokens < tokens_per_pass
    if budget <= 0:
        return True
    return step > excluded_steps and training_seconds >= budget


def step_passes(grad_accum, tokens_per_pass, tokens, budget_tokens):
    """Micro-batches in the next step: grad_accum, but never more than a token budget has left (the last
    step may be shorter), so that a trial never trains on more tokens than its budget."""
    if budget_tokens is None:
        return grad_accum
    return min(grad_accum, (budget_tokens - tokens) // tokens_per_pass)


def describe_budget(budget, budget_tokens):
    """The budget in words, for the log."""
    return f"{budget_tokens:,} tokens" if budget_tokens is not None else f"{budget:g} s"


def grad_accum_steps(seq_len):
    """Micro-batches per optimizer step: TOTAL_BATCH_TOKENS in passes of DEVICE_BATCH_SIZE sequences."""
    tokens_per_pass = DEVICE_BATCH_SIZE * seq_len
    if TOTAL_BATCH_TOKENS % tokens_per_pass:
        fail(f"TOTAL_BATCH_TOKENS {TOTAL_BATCH_TOKENS} is not a multiple of DEVICE_BATCH_SIZE * seq_len = {tokens_per_pass}")
    return TOTAL_BATCH_TOKENS // tokens_per_pass


def set_learning_rates(optimizers, lrm):
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lrm


def forward_backward(train_model, loader, passes, autocast, device):
    """Forward and backward over `passes` micro-batches (gradients add up); returns the mean loss."""
    total = torch.zeros((), device=device)
    for _ in range(passes):
        x, y = next(loader)
        with autocast:
            loss = train_model(x, y)
        (loss / passes).backward()
        total += loss.detach()
    return total / passes


def compile_failed(exc, model):
    """Give up torch.compile after its first step failed: the trial goes on in eager mode. Returns why."""
    print(f"torch.compile failed at the first step ({type(exc).__name__}: {str(exc)[:500]}); "
          f"falling back to eager mode", file=sys.stderr, flush=True)
    torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    return f"compile failed: {type(exc).__name__}"


def step_record(step, training_seconds, tokens, loss_value, lrm, tok_s, mem, flops_per_token, peak):
    """One line of the metrics stream (tokens: trained so far, this step's included)."""
    return {
        "step": step,
        "elapsed": round(training_seconds, 3),
        "tokens": tokens,
        "loss": round(loss_value, 6),
        "lr": MATRIX_LR * lrm,  # the Muon (matrix) learning rate; the others follow the same multiplier
        "tokens_per_s": round(tok_s, 1),
        "mfu": round(100 * flops_per_token * tok_s / peak, 2) if peak else None,
        "vram_mb": round(mem, 1) if mem is not None else None,
    }


def print_summary(training_seconds, compile_seconds, handover_seconds, peak_mem, mfu, total_tokens,
                  budget_tokens, steps, num_params, kind, device_name, compiled, tokens_per_s):
    """The `---` line and the `key: value` lines the supervisor reads."""

    def fmt(value, spec):
        return "unknown" if value is None else format(value, spec)

    print("---")  # val_bpb is not here: the supervisor measures it on the model handed over
    print(f"training_seconds: {training_seconds:.1f}")
    print(f"total_seconds:    {time.time() - T_START:.1f}")
    print(f"compile_seconds:  {compile_seconds:.1f}")
    print(f"handover_seconds: {handover_seconds:.1f}")
    print(f"peak_vram_mb:     {fmt(peak_mem, '.1f')}")
    print(f"mfu_percent:      {fmt(mfu, '.2f')}")
    print(f"total_tokens_M:   {total_tokens / 1e6:.3f}")
    print(f"total_tokens:     {total_tokens}")
    if budget_tokens is not None:
        print(f"budget_tokens:    {budget_tokens}")
    print(f"num_steps:        {steps}")
    print(f"num_params_M:     {num_params / 1e6:.3f}")
    print(f"depth:            {DEPTH}")
    print(f"device:           {kind}")
    print(f"device_name:      {device_name}")
    print(f"compiled:         {str(compiled).lower()}")
    print(f"tokens_per_s:     {fmt(tokens_per_s, '.0f')}")
    sys.stdout.flush()
    sys.stderr.flush()


def main():
    try:
        budget, budget_tokens, seed = read_settings()
        device, kind, device_name, autocast, precision, use_compile, compile_why = setup_device()
    except (ValueError, prepare.PrepareError) as exc:
        fail(str(exc))
    torch.manual_seed(seed)

    seq_len = MAX_SEQ_LEN
    grad_accum = grad_accum_steps(seq_len)
    tokens_per_pass = DEVICE_BATCH_SIZE * seq_len
    if budget_tokens and budget_tokens < tokens_per_pass:
        fail(f"the token budget of {budget_tokens:,} is less than one pass of DEVICE_BATCH_SIZE * seq_len = "
             f"{tokens_per_pass:,} tokens")
    windows = layer_windows(WINDOW_PATTERN, DEPTH, SHORT_WINDOW)
    with torch.device(device):
        model = GPT(VOCAB_SIZE, MODEL_DIM, DEPTH, HEAD_DIM, MLP_RATIO, windows, seq_len)
    model.init_weights()
    num_params = sum(p.numel() for p in model.parameters())
    flops_per_token = model.flops_per_token(seq_len)
    peak = peak_flops(device_name) if kind in ("cuda", "rocm") else None
    optimizers = build_optimizers(model, device)
    train_model = torch.compile(model) if use_compile else model

    print(f"device: {kind} ({device_name}), {precision}; compile: "
          f"{'on' if use_compile else 'off (' + compile_why + ')'}", file=sys.stderr)
    print(f"model: depth {DEPTH}, dim {MODEL_DIM}, {model.n_head} heads of {HEAD_DIM}, windows {WINDOW_PATTERN}, "
          f"{num_params / 1e6:.2f}M params; batch {TOTAL_BATCH_TOKENS} tokens = {grad_accum} x {DEVICE_BATCH_SIZE} x "
          f"{seq_len}; budget {describe_budget(budget, budget_tokens)}; seed {seed}", file=sys.stderr,
          flush=True)

    metrics_path = os.environ.get("AUTORESEARCH_METRICS", "").strip()
    metrics = open(metrics_path, "a") if metrics_path else sys.stdout
    loader = make_dataloader("train", DEVICE_BATCH_SIZE, seq_len, device, seed=seed)

    # The first step(s) compile and warm up kernels; they train the model but their time is
    # reported as compile_seconds, not counted against a time budget (a token budget counts their tokens).
    excluded_steps = 2 if use_compile else 1
    step, training_seconds, compile_seconds, timed_tokens, total_tokens = 0, 0.0, 0.0, 0, 0
    peak_mem = None
    while not budget_spent(step, excluded_steps, training_seconds, budget, total_tokens, budget_tokens,
                           tokens_per_pass):
        t0 = time.time()
        lrm = lr_multiplier(budget_progress(training_seconds, budget, total_tokens, budget_tokens))
        set_learning_rates(optimizers, lrm)
        passes = step_passes(grad_accum, tokens_per_pass, total_tokens, budget_tokens)
        try:
            mean_loss = forward_backward(train_model, loader, passes, autocast, device)
        except Exception as exc:
            if not (use_compile and step == 0):
                raise
            compile_why = compile_failed(exc, model)
            train_model, use_compile, excluded_steps = model, False, 1
            mean_loss = forward_backward(train_model, loader, passes, autocast, device)
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
        loss_value = mean_loss.item()  # waits for the device
        if kind in ("cuda", "rocm"):
            torch.cuda.synchronize()
        dt = time.time() - t0
        step += 1
        step_tokens = passes * tokens_per_pass
        total_tokens += step_tokens
        if not math.isfinite(loss_value) or loss_value > 100:
            fail(f"loss is {loss_value} at step {step}")
        if step <= excluded_steps:
            compile_seconds += dt
        else:
            training_seconds += dt
            timed_tokens += step_tokens
        tok_s = step_tokens / dt
        mem = memory_mb(kind)
        if mem is not None:
            peak_mem = max(peak_mem or 0.0, mem)
        record = step_record(step, training_seconds, total_tokens, loss_value, lrm, tok_s, mem,
                             flops_per_token, peak)
        print(json.dumps(record), file=metrics, flush=True)
    if metrics is not sys.stdout:
        metrics.close()

    # Hand the eager model over (exported as a graph): the supervisor's evaluator computes val_bpb on
    # validation data this process never sees.
    t_handover = time.time()
    try:
        with autocast:
            hand_over(model)
    except prepare.HandOverError as exc:
        fail(str(exc))
    handover_seconds = time.time() - t_handover

    tokens_per_s = timed_tokens / training_seconds if training_seconds > 0 else None
    mfu = 100 * flops_per_token * tokens_per_s / peak if peak and tokens_per_s else None
    peak_mem = memory_mb(kind) if kind in ("cuda", "rocm") else peak_mem
    print_summary(training_seconds, compile_seconds, handover_seconds, peak_mem, mfu, total_tokens,
                  budget_tokens, step, num_params, kind, device_name, use_compile, tokens_per_s)
    # Everything is written and closed: skip the interpreter's teardown of torch's modules, which
    # takes 0.3-0.7 s that every trial would otherwise spend after its result is known.
    os._exit(0)


if __name__ == "__main__":
    try:
        main()
    except torch.cuda.OutOfMemoryError as exc:
        fail(f"out of GPU memory ({str(exc).splitlines()[0]}); try a smaller DEVICE_BATCH_SIZE")
