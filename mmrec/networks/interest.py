"""Interest model: a GRU over a user's behaviour events whose hidden state is the user's interest.

Each event contributes ``item vector + event-type embedding + time-gap embedding + projected event text`` (the
text of a review, query or tag, when the event has one). Advancing a user by one event is one GRU step from the
stored state, so interests can be refreshed per event without recomputing the history.

Reference: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks" (GRU4Rec), ICLR 2016.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["InterestConfig", "InterestModel"]


@dataclass(frozen=True)
class InterestConfig:
    """Attributes:
        item_dim: size ``D`` of item vectors (the GRU input and the interest vector).
        hidden_dim: GRU state size ``H``.
        n_events: event-type vocabulary size (fixed at training time).
        text_dim: size of event-text vectors, the text encoder's width (0 = events carry no text).
        n_gap_buckets: time-gap buckets (see :func:`mmrec.data.batch.gap_buckets`).
        use_gaps: ``False`` leaves the time-gap embedding out of the inputs (data ordered without time).
        dropout: on the GRU inputs and outputs.
    """

    item_dim: int = 128
    hidden_dim: int = 128
    n_events: int = 1
    text_dim: int = 384
    n_gap_buckets: int = 28
    dropout: float = 0.2
    use_gaps: bool = True

    def __post_init__(self) -> None:
        if self.n_events < 1:
            raise ValueError(f"n_events must be >= 1, got {self.n_events}")
        if self.hidden_dim < 1 or self.item_dim < 1:
            raise ValueError("hidden_dim and item_dim must be >= 1")


class InterestModel(nn.Module):
    """``(B, L, D)`` item vectors of events + event ids + gap buckets (+ text) -> ``(B, L, H)`` states.

    ``initial_state (H,)`` is learned: it is the interest of a user with no history (the cold-user fallback).

    Example::

        >>> m = InterestModel(InterestConfig(n_events=2, text_dim=0))
        >>> x = m.event_inputs(torch.randn(3, 5, 128), torch.zeros(3, 5, dtype=torch.long),
        ...                    torch.zeros(3, 5, dtype=torch.long))
        >>> states, last = m(x, torch.tensor([5, 2, 1]))
        >>> states.shape, last.shape
        (torch.Size([3, 5, 128]), torch.Size([3, 128]))
    """

    def __init__(self, config: InterestConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.event_embedding = nn.Embedding(c.n_events, c.item_dim)
        self.gap_embedding = nn.Embedding(c.n_gap_buckets, c.item_dim)
        nn.init.normal_(self.event_embedding.weight, std=0.02)
        nn.init.normal_(self.gap_embedding.weight, std=0.02)
        self.text_proj = nn.Linear(c.text_dim, c.item_dim) if c.text_dim else None
        self.input_norm = nn.LayerNorm(c.item_dim)
        self.dropout = nn.Dropout(c.dropout)
        self.gru = nn.GRU(c.item_dim, c.hidden_dim, batch_first=True)
        self.initial_state = nn.Parameter(torch.zeros(c.hidden_dim))
        self.to_interest = nn.Linear(c.hidden_dim, c.item_dim)

    def event_inputs(
        self,
        item_vectors: torch.Tensor,
        events: torch.Tensor,
        gaps: torch.Tensor,
        text: torch.Tensor | None = None,
        has_text: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """GRU inputs ``(..., D)`` from item vectors ``(..., D)``, event ids and gap buckets ``(...)`` and optional
        event text ``(..., T)`` with its presence mask ``(...)``."""
        # functional forms of the embeddings and the norm: the same arithmetic without a module call each, which
        # is most of the cost of one served event
        x = item_vectors + F.embedding(events, self.event_embedding.weight)
        if self.config.use_gaps:
            x = x + F.embedding(gaps, self.gap_embedding.weight)
        if self.text_proj is not None and text is not None:
            projected = self.text_proj(text)
            if has_text is not None:
                projected = projected * has_text.unsqueeze(-1).to(projected.dtype)
            x = x + projected
        norm = self.input_norm
        x = F.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
        return self.dropout(x) if self.training else x

    def initial(self, batch_size: int) -> torch.Tensor:
        """``(B, H)`` state of users with no history."""
        return self.initial_state.expand(batch_size, -1)

    def forward(
        self, inputs: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the GRU over right-padded inputs ``(B, L, D)`` with ``lengths (B,)`` >= 1 from ``state (B, H)``
        (default: the learned initial state). Returns all states ``(B, L, H)`` (zeros past each length) and each
        row's last state ``(B, H)``."""
        b, width = inputs.shape[:2]
        h0 = (self.initial(b) if state is None else state).unsqueeze(0).contiguous()
        # Plain (unpacked) GRU: padding sits after each row's events, so it never reaches a real position's
        # state; packed sequences give the same numbers with a much slower backward pass on CPU.
        out, _ = self.gru(inputs, h0)
        real = torch.arange(width, device=inputs.device)[None, :] < lengths[:, None]
        out = out * real.unsqueeze(-1).to(out.dtype)
        last = out.gather(1, (lengths - 1).clamp(min=0).view(b, 1, 1).expand(b, 1, out.shape[-1])).squeeze(1)
        return out, last

    def leave_one_out(self, inputs: torch.Tensor, rejoined: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """Last states ``(L + 1, H)`` of a history of ``L`` events (row 0) and of the ``L`` histories without one of
        them (row ``1 + i``: without event ``i``), all from ``state (1, H)``, in ``L`` GRU steps (inference only).

        ``inputs (L, D)``: the events' inputs; ``rejoined (L - 1, D)``: event ``t``'s input (``t >= 1``) when event
        ``t - 1`` is left out (its time gap then counts from event ``t - 2``). A history without event ``i`` has the
        whole history's state up to ``i``: it joins at step ``i + 1`` and runs beside it, so step ``t`` advances
        ``t + 1`` rows, where ``L + 1`` separate histories would take ``L`` steps of ``L + 1`` rows each."""
        gru, n, h = self.gru, inputs.shape[0], state.shape[1]
        x = torch.addmm(gru.bias_ih_l0, torch.cat([inputs, rejoined]), gru.weight_ih_l0.T)  # (2L - 1, 3H)
        rows, before = state, state  # every running history's state; the whole one's before the previous event
        for t in range(n):
            gi = x[t : t + 1]
            if t:
                rows = torch.cat([rows, before])  # the history without event t - 1 joins
                gi = torch.cat([gi.expand(t, -1), x[n + t - 1 : n + t]])
            before = rows[:1]
            gh = torch.addmm(gru.bias_hh_l0, rows, gru.weight_hh_l0.T)
            # torch.nn.GRU's equations, fused: r, z = sigmoid(.), n = tanh(x_n + r * h_n), h' = n + z * (h - n)
            rz = torch.sigmoid(gi[:, : 2 * h] + gh[:, : 2 * h])
            candidate = torch.tanh(torch.addcmul(gi[:, 2 * h :], rz[:, :h], gh[:, 2 * h :]))
            rows = torch.lerp(candidate, rows, rz[:, h:])
        return torch.cat([rows, before])  # the history without the last event ends where the whole one was before it

    def step(self, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """One event for each of ``B`` users: inputs ``(B, D)``, states ``(B, H)`` -> new states ``(B, H)``."""
        gru = self.gru  # the GRU's own cell kernel: a one-step sequence through nn.GRU costs several times more
        return torch.gru_cell(inputs, state, gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)

    def interest(self, states: torch.Tensor) -> torch.Tensor:
        """Interest vectors ``(..., D)`` from GRU states ``(..., H)``."""
        return F.linear(self.dropout(states) if self.training else states, self.to_interest.weight,
                        self.to_interest.bias)
