"""A pre-allocated (static) KV cache and a forward pass over it that a CUDA graph can capture.

Why: a verify step feeds only K+1 tokens, so on a GPU its time is mostly kernel-launch overhead (hundreds of small
kernels, each launched from Python). A CUDA graph replays the whole forward with one launch, but it needs every
tensor at a fixed address and no host synchronisation: the HF `DynamicCache` grows by concatenation (new addresses
every step), so it cannot be captured. Here each session owns one *slot* of a pool allocated once:

    keys[layer], values[layer]: [S, Hkv, max_len, d]   (S slots, in the model's dtype and device)

`static_forward` writes the new tokens' keys/values at their positions (`index_copy_`) and attends over all
`max_len` positions of the slot with a mask computed from the positions by tensor ops, so the kernels, shapes and
addresses are the same at every step for a given number of new tokens T. Entries beyond the committed length are
stale but masked out (a query at position p sees keys 0..p only, and every key in (committed, p] was written by the
same forward before attention reads it), so rollback only shortens the token list.

`GraphRunner` owns the pool, hands out slots and captures one graph per (slot, T) lazily for T in `lengths`
(default 2..9: K = 1..8 drafts plus the one uncached committed token). Other lengths (prefills) run
`static_forward` eagerly. The capture function is injectable: `cuda_capture` on a GPU, `eager_capture` (the same
static-buffer copy-in / replay / copy-out, without a graph) in tests on CPU.

Overflow: `StaticSequence.extend` raises `SlotOverflow` (before touching anything) when the tokens would not fit
in the slot; callers check `fits()` first and move the session to a normal `CachedSequence`, whose first forward
re-feeds the whole committed sequence (one re-prefill). See `verifier_service/core.py`.

Supported models: those of `specdec.batched.supports_batching` (the Llama family).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from specdec.batched import TreeLayout, _rotary, supports_batching, tree_layout
from specdec.kvcache import CachedSequence, ForwardOutput, common_prefix_length

log = logging.getLogger(__name__)

DEFAULT_GRAPH_LENGTHS = tuple(range(2, 10))  # T = K+1 for K = 1..8
DEFAULT_GRAPH_SLOTS = 8  # sessions that can hold a static slot at once (--graph-slots)
DEFAULT_GRAPH_MAX_LEN = 2048  # positions per slot (--graph-max-len); longer sessions move to a DynamicCache

Outputs = tuple[torch.Tensor, torch.Tensor]  # (logits [T, V], hidden [T, H])
# capture(fn) -> (replay, outputs): after replay(), `outputs` hold what fn() would return for the current
# contents of the static input buffers that fn reads.
Capture = Callable[[Callable[[], Outputs]], tuple[Callable[[], None], Outputs]]


class SlotOverflow(Exception):
    """A static sequence would grow past its slot's `max_len`: move the session to a `CachedSequence`."""


@dataclass(frozen=True)
class GraphOptions:
    """The verifier's `--cuda-graphs auto|on|off`, `--static-kv auto|on|off`, `--graph-slots`, `--graph-max-len`."""

    mode: str = "auto"  # CUDA graphs. auto: on when the model is on CUDA and supported; on: required; off: never
    slots: int = DEFAULT_GRAPH_SLOTS
    max_len: int = DEFAULT_GRAPH_MAX_LEN
    static: str = "auto"  # the static KV pool (graphs need it). auto: for supported models, on any device


def static_forward(
    model: Any,
    keys: Sequence[torch.Tensor],  # per layer [S, Hkv, max_len, d]
    values: Sequence[torch.Tensor],  # per layer [S, Hkv, max_len, d]
    slot: int,
    ids: torch.Tensor,  # [T] token ids
    positions: torch.Tensor,  # [T] their positions: consecutive, starting at the slot's committed length
    keep: int | None = None,  # LM head over the last `keep` positions only (None: all T)
    attend: int | None = None,  # eager only: attend over the first `attend` positions (None: all max_len)
    tree: TreeLayout | None = None,  # eager only: `ids` are a token tree (its depths and ancestors); None: a chain
) -> Outputs:
    """(logits [keep or T, V], final hidden states [T, H]) for `ids`, writing their keys/values into `slot`.

    Pure tensor code: no Python branch on tensor values and no host sync, so a CUDA graph can capture it. An eager
    caller that knows the length passes `attend` (start + T) so attention reads only the live positions.

    A tree's tokens are stored at `positions` in feeding order, but each is rotated to (first position + its depth)
    and sees the committed prefix, its ancestors and itself (the layout `specdec.batched.tree_layout` gives)."""
    inner = model.model
    max_len = attend if attend is not None else keys[0].shape[2]
    hidden = inner.embed_tokens(ids[None])  # [1, T, H]
    rotated = positions if tree is None else positions[0] + torch.tensor(tree.depths, device=ids.device)  # [T]
    cos, sin = inner.rotary_emb(hidden, position_ids=rotated[None])  # [1, T, d] each
    # query i sees key j iff j <= positions[i]: the committed prefix, and the new tokens up to itself
    mask: torch.Tensor | None = torch.arange(max_len, device=ids.device)[None, :] <= positions[:, None]  # [T, L]
    if tree is not None:
        mask[:, positions] = tree.ancestors  # type: ignore[index]  # among the new tokens: its ancestors only
    elif attend is not None and ids.shape[0] == 1:
        mask = None  # one new token at the end of the live positions sees all of them
    for layer_idx, layer in enumerate(inner.layers[: model.config.num_hidden_layers]):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)  # [1, T, H]
        t, d = x.shape[1], attn.head_dim
        q = attn.q_proj(x).view(1, t, -1, d).transpose(1, 2)  # [1, Hq, T, d]
        k = attn.k_proj(x).view(1, t, -1, d).transpose(1, 2)  # [1, Hkv, T, d]
        v = attn.v_proj(x).view(1, t, -1, d).transpose(1, 2)  # [1, Hkv, T, d]
        q, k = _rotary(attn)(q, k, cos, sin)
        slot_keys = keys[layer_idx][slot]  # [Hkv, max_len, d] a view into the pool
        slot_values = values[layer_idx][slot]  # [Hkv, max_len, d]
        slot_keys.index_copy_(1, positions, k[0])
        slot_values.index_copy_(1, positions, v[0])
        live_keys, live_values = slot_keys[:, :max_len], slot_values[:, :max_len]  # [Hkv, max_len or attend, d]
        out = F.scaled_dot_product_attention(
            q, live_keys[None], live_values[None], attn_mask=mask, scale=attn.scaling, enable_gqa=True
        )  # [1, Hq, T, d] (as HF's forward computes it, in the model's dtype: a lone session stays close to HF)
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(1, t, -1))  # [1, T, H]
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))  # [1, T, H]
    hidden = inner.norm(hidden)[0]  # [T, H] final hidden states (what output_hidden_states[-1] holds)
    head_in = hidden if keep is None else hidden[hidden.shape[0] - keep :]  # [keep, H]
    return model.lm_head(head_in), hidden  # [keep, V], [T, H]


def _attention(
    q: torch.Tensor,  # [B, Hq, T, d]
    k: torch.Tensor,  # [B, Hkv, L, d]
    v: torch.Tensor,  # [B, Hkv, L, d]
    mask: torch.Tensor | None,  # [B, 1, T, L] bool
    scale: float,
) -> torch.Tensor:  # [B, Hq, T, d]
    """Grouped-query attention of the padded batched path. On a CPU, bfloat16/float16 inputs are attended in float32:
    torch's CPU kernel is ~4x slower in bfloat16 than the casts plus the float32 kernel (measured: 1.67 vs 0.37 ms,
    8 x 300 keys). That rounds differently from HF's bfloat16 attention, as any change of batch shape may: batched
    sessions keep greedy identity up to numeric near-ties (a lone session uses the model's dtype)."""
    if q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16):
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, scale=scale, enable_gqa=True
        )
        return out.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)


def eager_capture(fn: Callable[[], Outputs]) -> tuple[Callable[[], None], Outputs]:
    """A stand-in for `cuda_capture` without a graph (tests, CPU): replay re-runs fn and copies its results into
    the first call's output tensors, so the runner's buffer logic is exercised exactly as with a graph."""
    outputs = fn()

    def replay() -> None:
        for static, new in zip(outputs, fn(), strict=True):
            static.copy_(new)

    return replay, outputs


def cuda_capture(pool: Any) -> Capture:
    """Capture into a CUDA graph, all graphs sharing the memory pool `pool` (`torch.cuda.graph_pool_handle()`).

    Sharing is safe here because graphs replay one at a time on one stream and their outputs are cloned right
    after each replay, before any other graph runs (a later graph may reuse an earlier one's intermediates)."""

    def capture(fn: Callable[[], Outputs]) -> tuple[Callable[[], None], Outputs]:
        # Warm-up on a side stream, as the PyTorch docs show (lazy init, cuBLAS handles, autotuning). The static
        # inputs already hold the real step's ids/positions, so the warm-up writes the same keys/values the step
        # itself writes: harmless.
        current = torch.cuda.current_stream()
        side = torch.cuda.Stream()
        side.wait_stream(current)
        with torch.cuda.stream(side):
            fn()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: another thread's allocations (a draft model in the same process) do not break capture
        with torch.cuda.graph(graph, pool=pool, capture_error_mode="thread_local"):
            outputs = fn()
        return graph.replay, outputs

    return capture


@dataclass
class _Graph:
    ids: torch.Tensor  # [T] static input: token ids
    positions: torch.Tensor  # [T] static input: their positions
    replay: Callable[[], None]
    logits: torch.Tensor  # [T, V] static output
    hidden: torch.Tensor  # [T, H] static output


@dataclass
class RaggedPlan:
    """`GraphRunner.plan_ragged`: the layout of one ragged batched forward over static slots (B sessions, N new
    tokens), shared by its layers."""

    session_of: torch.Tensor  # [N] each new token's session
    step_of: torch.Tensor  # [N] its index among its session's new tokens
    slot_of: torch.Tensor  # [N] its session's slot
    position_of: torch.Tensor  # [N] its position in its sequence
    rows: slice | torch.Tensor  # the sessions' slots: a slice (consecutive, in order) or their indices [B]
    live: int  # Lmax: key positions read
    t_max: int  # Tmax: padded queries per session
    mask: torch.Tensor  # [B, 1, Tmax, Lmax] bool


class GraphRunner:
    """The static KV pool of one model, its slots, and the captured graphs per (slot, T).

    `capture` None: every forward runs `static_forward` eagerly (still a static cache, no graphs)."""

    def __init__(
        self,
        model: Any,
        slots: int = DEFAULT_GRAPH_SLOTS,
        max_len: int = DEFAULT_GRAPH_MAX_LEN,
        capture: Capture | None = None,
        lengths: Sequence[int] = DEFAULT_GRAPH_LENGTHS,
    ) -> None:
        if not supports_batching(model):
            raise ValueError("a static KV cache needs a Llama-family model (specdec.batched.supports_batching)")
        if slots < 1 or max_len < 2:
            raise ValueError(f"graph slots must be >= 1 and max_len >= 2, got {slots} and {max_len}")
        self.model = model
        self.max_len = max_len
        self.capture = capture
        self.capture_error = ""  # why capture was given up, if it was
        self.lengths = frozenset(lengths)
        config = model.config
        attn = model.model.layers[0].self_attn
        weight = model.lm_head.weight  # [V, H]
        self.device, self.dtype = weight.device, weight.dtype
        shape = (slots, int(config.num_key_value_heads), max_len, int(attn.head_dim))
        # A graph attends over all max_len positions (masked), so stale entries must be finite: zeros. Eager
        # forwards read only written positions, so without graphs the pool is left uninitialised: pages that no
        # session reaches are never touched (on a CPU, ~46 KB per position for SmolLM2 in float32).
        fill = torch.zeros if capture is not None else torch.empty
        with torch.inference_mode():  # the pool is only ever touched under inference mode
            layers = range(int(config.num_hidden_layers))
            self.keys = [fill(shape, dtype=self.dtype, device=self.device) for _ in layers]  # [S, Hkv, L, d]
            self.values = [fill(shape, dtype=self.dtype, device=self.device) for _ in layers]
        self.bytes_per_token = 2 * len(self.keys) * shape[1] * shape[3] * self.keys[0].element_size()
        # positions of each slot known to hold finite values (written, or zeroed): a batched attention reads slots
        # up to the longest session's length and masks the rest, and a masked position must not hold NaN (0 * NaN)
        self._finite = [max_len if capture is not None else 0] * slots
        self._free = list(range(slots - 1, -1, -1))  # popped from the end: slot 0 first
        self._graphs: dict[tuple[int, int], _Graph] = {}

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def acquire(self) -> StaticSequence | None:
        """A sequence on a free slot, or None when all are taken."""
        return StaticSequence(self, self._free.pop()) if self._free else None

    def release(self, slot: int) -> None:
        if slot in self._free:
            raise ValueError(f"slot {slot} released twice")
        self._free.append(slot)  # its graphs stay: the next owner replays them (stale entries are masked)

    def plan_ragged(
        self,
        slots: Sequence[int],
        offsets: Sequence[int],
        lengths: Sequence[int],
        trees: Sequence[torch.Tensor | None] = (),  # per session: None (a chain) or its ancestors [T, T] bool
    ) -> RaggedPlan:
        """What every layer of one ragged batched forward needs to attend for sessions on these slots (`offsets`:
        positions already cached; `lengths`: new tokens), computed once per forward: where each new token goes, the
        padded layout of the queries and the per-session causal mask (a tree's: cached prefix + ancestors). Zeroes
        never-written positions up to the longest session's end (a masked position must not hold NaN: 0 * NaN)."""
        b, device = len(slots), self.device
        live = max(offset + t for offset, t in zip(offsets, lengths, strict=True))  # Lmax
        if live > self.max_len:
            raise SlotOverflow(f"a session's positions do not fit a slot of {self.max_len}")
        self._make_finite(slots, live)
        session_of = torch.repeat_interleave(torch.arange(b, device=device), torch.tensor(lengths, device=device))
        step_of = torch.cat([torch.arange(t, device=device) for t in lengths])  # [N] t within its session
        t_max = max(lengths)
        steps = torch.arange(t_max, device=device)[None, :]  # [1, Tmax]
        # query t of session b sees key j iff j <= L_b + t; padded queries see key 0 (their output is dropped)
        limit = torch.tensor(offsets, device=device)[:, None] + steps  # [B, Tmax]
        limit = torch.where(steps < torch.tensor(lengths, device=device)[:, None], limit, 0)
        consecutive = list(slots) == list(range(slots[0], slots[0] + b))  # read the pool as a view
        mask = torch.arange(live, device=device)[None, None, :] <= limit[:, :, None]  # [B, Tmax, Lmax]
        for row, ancestors in enumerate(trees):
            if ancestors is not None:  # new tokens stored in feeding order; each sees its ancestors among them
                t, offset = len(ancestors), offsets[row]
                mask[row, :t, offset : offset + t] = ancestors
        return RaggedPlan(
            session_of=session_of,
            step_of=step_of,
            slot_of=torch.tensor(slots, device=device)[session_of],
            position_of=torch.tensor(offsets, device=device)[session_of] + step_of,
            rows=slice(slots[0], slots[0] + b) if consecutive else torch.tensor(slots, device=device),
            live=live,
            t_max=t_max,
            mask=mask[:, None],
        )

    def attend_ragged(
        self,
        attn: Any,
        q: torch.Tensor,  # [1, Hq, N, d] the new tokens of B sessions laid end to end (rotary applied)
        k: torch.Tensor,  # [1, Hkv, N, d]
        v: torch.Tensor,  # [1, Hkv, N, d]
        plan: RaggedPlan,
        layer_idx: int,
    ) -> torch.Tensor:  # [1, N, Hq * d]
        """One layer's attention for several sessions' new tokens in one call: their keys and values are written
        into their slots, then the queries padded to [B, Hq, Tmax, d] attend to the slots' first Lmax positions."""
        keys, values = self.keys[layer_idx], self.values[layer_idx]  # [S, Hkv, max_len, d]
        keys[plan.slot_of, :, plan.position_of] = k[0].transpose(0, 1)  # [N, Hkv, d] into slot and position
        values[plan.slot_of, :, plan.position_of] = v[0].transpose(0, 1)
        slot_keys = keys[plan.rows, :, : plan.live]  # [B, Hkv, Lmax, d]: a view, or a copy for scattered slots
        slot_values = values[plan.rows, :, : plan.live]
        queries = q.new_zeros(len(plan.mask), q.shape[1], plan.t_max, q.shape[3])  # [B, Hq, Tmax, d] padded
        queries[plan.session_of, :, plan.step_of] = q[0].transpose(0, 1)
        out = _attention(queries, slot_keys, slot_values, plan.mask, attn.scaling)  # [B, Hq, Tmax, d]
        return out[plan.session_of, :, plan.step_of].reshape(1, q.shape[2], -1)  # [1, N, Hq * d]

    def written(self, slot: int, end: int) -> None:
        """A forward writes positions up to `end` of `slot` (every position before its start is already written)."""
        self._finite[slot] = max(self._finite[slot], end)

    def _make_finite(self, slots: Sequence[int], length: int) -> None:
        """Zero the never-written positions below `length` of these slots, in every layer (once per position)."""
        for slot in slots:
            start = self._finite[slot]
            if start < length:
                for pool in (*self.keys, *self.values):
                    pool[slot, :, start:length].zero_()
                self._finite[slot] = length

    @torch.inference_mode()
    def forward(
        self,
        slot: int,
        token_ids: Sequence[int],
        start: int,
        keep_logits: int,
        want_hidden: bool,
        eager: bool = False,
        parents: Sequence[int] | None = None,
    ) -> ForwardOutput:
        """Run token_ids at positions start .. start+T-1 of `slot`. A graph when one exists or can be captured for
        T (unless `eager` or a token tree: `parents` as in `specdec.batched.ExtendJob`), else `static_forward`.
        Outputs are fresh tensors (never the graph's static ones)."""
        t = len(token_ids)
        if start + t > self.max_len:
            raise SlotOverflow(f"positions up to {start + t - 1} do not fit a slot of {self.max_len}")
        keep = min(max(1, keep_logits), t)
        ids = torch.tensor(list(token_ids), dtype=torch.long, device=self.device)  # [T]
        positions = torch.arange(start, start + t, dtype=torch.long, device=self.device)  # [T]
        tree = None if parents is None else tree_layout(parents, self.device)
        graph = None if eager or tree is not None else self._graph(slot, t, ids, positions)
        if graph is None:
            # Without graphs, attend over the live positions only; with graphs, eager forwards (prefills) compute
            # exactly what a replay would (all max_len positions, masked). A tree is never graphed: live only.
            attend = start + t if self.capture is None or tree is not None else None
            logits, hidden = static_forward(
                self.model, self.keys, self.values, slot, ids, positions, keep, attend, tree
            )
            self.written(slot, start + t)  # only now: every layer holds them (a failed forward leaves them unmarked)
            return ForwardOutput(logits=logits, hidden=hidden if want_hidden else None)
        graph.ids.copy_(ids)
        graph.positions.copy_(positions)
        graph.replay()
        self.written(slot, start + t)
        return ForwardOutput(
            logits=graph.logits[t - keep :].clone(),  # [keep, V]
            hidden=graph.hidden.clone() if want_hidden else None,  # [T, H]
        )

    def _graph(self, slot: int, t: int, ids: torch.Tensor, positions: torch.Tensor) -> _Graph | None:
        """The graph for (slot, T), captured now if need be; None when T is not graphed or capture is off."""
        graph = self._graphs.get((slot, t))
        if graph is not None or self.capture is None or t not in self.lengths:
            return graph
        static_ids, static_positions = ids.clone(), positions.clone()  # [T] each, fixed addresses from now on

        def run() -> Outputs:
            return static_forward(self.model, self.keys, self.values, slot, static_ids, static_positions)

        try:
            replay, (logits, hidden) = self.capture(run)
        except Exception as exc:  # e.g. an op that cannot be captured: run eagerly from now on, never fail the step
            log.warning("CUDA graph capture failed for T=%d; static forwards run eagerly from now on", t, exc_info=True)
            self.capture, self.capture_error = None, f"{type(exc).__name__}: {exc}"
            return None
        graph = _Graph(static_ids, static_positions, replay, logits, hidden)
        self._graphs[(slot, t)] = graph
        return graph


class _SlotCache:
    """What `specdec.batched`'s ragged forward needs of a session's cache (`DynamicCache.update`'s contract), over a
    static slot: write the new keys/values after the sequence's cached tokens and return the live ones."""

    def __init__(self, seq: StaticSequence) -> None:
        self.seq = seq

    def update(
        self,
        keys: torch.Tensor,  # [1, Hkv, T, d] the new tokens'
        values: torch.Tensor,  # [1, Hkv, T, d]
        layer_idx: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:  # [1, Hkv, L+T, d] each: cached and new
        runner, slot = self.seq.runner, self.seq.slot
        start, t = len(self.seq.tokens), keys.shape[2]  # the forward appends to `tokens` after every layer ran
        if start + t > runner.max_len:
            raise SlotOverflow(f"positions up to {start + t - 1} do not fit a slot of {runner.max_len}")
        slot_keys, slot_values = runner.keys[layer_idx][slot], runner.values[layer_idx][slot]  # [Hkv, max_len, d]
        slot_keys[:, start : start + t] = keys[0]
        slot_values[:, start : start + t] = values[0]
        if layer_idx == len(runner.keys) - 1:  # the last layer: every layer now holds them
            runner.written(slot, start + t)
        return slot_keys[None, :, : start + t], slot_values[None, :, : start + t]


class StaticSequence:
    """`CachedSequence`'s interface over one slot of a `GraphRunner` (see the module docstring). `cache` lets the
    ragged batched forward (`specdec.batched`) run it with other sessions."""

    def __init__(self, runner: GraphRunner, slot: int) -> None:
        self.runner = runner
        self.slot = slot
        self.model = runner.model
        self.tokens: list[int] = []
        self.released = False
        self.cache = _SlotCache(self)

    @property
    def capacity(self) -> int:
        return self.runner.max_len

    def fits(self, length: int) -> bool:
        """Whether a sequence of `length` tokens fits the slot."""
        return length <= self.runner.max_len

    def rollback(self, length: int) -> None:
        """Drop cached positions >= length (their stale entries are masked out by position)."""
        del self.tokens[length:]

    def reset(self) -> None:
        self.tokens.clear()

    def compact(self, start: int, sources: Sequence[int]) -> None:
        """Keep cached positions < start, then the entries at positions `sources` (a tree's accepted path, fed in
        tree order) moved to start, start+1, ...; drop the rest."""
        index = torch.tensor(list(sources), dtype=torch.long, device=self.runner.device)  # [A]
        for pool in (*self.runner.keys, *self.runner.values):
            rows = pool[self.slot]  # [Hkv, max_len, d]
            rows[:, start : start + len(index)] = rows.index_select(1, index)  # a copy first: sources may overlap
        self.tokens[start:] = [self.tokens[i] for i in sources]

    def pending(self, committed: Sequence[int]) -> list[int]:
        """As `CachedSequence.pending`: roll back to what agrees with `committed`, keep its last token uncached."""
        keep = min(common_prefix_length(self.tokens, committed), len(committed) - 1)
        self.rollback(keep)
        return list(committed[keep:])

    def extend(
        self,
        token_ids: Sequence[int],
        keep_logits: int = 1,
        want_hidden: bool = False,
        parents: Sequence[int] | None = None,
    ) -> ForwardOutput:
        """As `CachedSequence.extend`, and a token tree when `parents` is given (`specdec.batched.ExtendJob`);
        raises `SlotOverflow` (cache unchanged) when the tokens do not fit."""
        if self.released:
            raise RuntimeError("this static sequence's slot was released")
        out = self.runner.forward(self.slot, token_ids, len(self.tokens), keep_logits, want_hidden, parents=parents)
        self.tokens.extend(int(t) for t in token_ids)
        return out

    def nbytes(self) -> int:
        """Bytes of the slot in use (the whole pool is allocated up front; this counts the committed positions,
        comparable with `CachedSequence.nbytes`)."""
        return len(self.tokens) * self.runner.bytes_per_token

    def release(self) -> None:
        """Give the slot back (idempotent); the sequence cannot run again."""
        if not self.released:
            self.released = True
            self.tokens.clear()
            self.runner.release(self.slot)


KVSequence = CachedSequence | StaticSequence
