"""A trained COLD model rewritten for scoring many candidate rows: the same logits, cheaper operators.

:class:`~coarserank.student.cold.ColdModel` is written for training: one embedding per field,
stacked to ``[B, F, d]``, gated by a broadcast multiply, flattened into the MLP. Exported as is,
ONNX Runtime spends a third of a 1,000-row call outside the matrix products (the stack, the
broadcast multiply of the gate, the value-times-vector embedding of each numeric field).
:class:`ColdScorer` computes the same function in a form that serves faster (the way inference
engines fold batch normalisation into the preceding layer):

- every categorical field is looked up in one concatenated table with one ``Gather`` (codes offset
  per field), so the embeddings arrive already flat;
- a numeric field's embedding ``x_f a_f`` enters the gate and the first MLP layer only through
  ``W_f a_f``: those products are folded into ``[F_num, F]`` and ``[F_num, H]`` matrices, so the
  numeric fields cost one small matrix product instead of a ``d``-wide embedding each;
- the gate ``s`` is expanded to the embedding columns by a 0/1 matrix product and applied by an
  elementwise multiply of equal shapes.

The logits equal the model's up to float summation order (the export's parity check compares the
graph with :class:`ColdModel` itself, never with this form). Built at export time from a trained
model (:meth:`ColdModel.for_serving`); it holds copies, so training the model afterwards does not
change it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from coarserank.layers.embedding import masked_mean

__all__ = ["ColdScorer"]


class ColdScorer(nn.Module):
    """The logits of a trained :class:`~coarserank.student.cold.ColdModel` from fewer, cheaper operators.

    Parameters
    ----------
    model : ColdModel
        The trained model (read once; its parameters are copied).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        emb, d = model.embedding, model.embedding.dim
        fields = list(emb.schema.fields)
        linears = [m for m in model.mlp.net if isinstance(m, nn.Linear)]
        if not linears:
            raise ValueError("a COLD model's MLP has at least one linear layer")
        first = linears[0]
        index = {f.name: i for i, f in enumerate(fields)}
        self.categorical = [f.name for f in fields if f.kind == "categorical"]
        self.pooled = [f.name for f in fields if f.kind in ("multi", "sequence")]
        self.numeric = [f.name for f in fields if f.kind == "numeric"]
        dense = self.categorical + self.pooled
        # the columns of u = [dense embeddings (d per field), numeric values (1 per field)], and the
        # field each belongs to
        owner = [index[n] for n in dense for _ in range(d)] + [index[n] for n in self.numeric]
        with torch.no_grad():
            gate_w, gate_b = model.gate.linear.weight, model.gate.linear.bias  # [F, F*d], [F]
            tables = [emb.table(emb.schema[n]).weight for n in self.categorical]
            self.offsets = [int(sum(t.shape[0] for t in tables[:i])) for i in range(len(tables))]
            self.register_buffer("table", torch.cat(tables).clone() if tables else torch.zeros(0, d))
            self.pooled_tables = nn.ModuleList(
                [nn.Embedding.from_pretrained(emb.table(emb.schema[n]).weight.clone(), freeze=True)
                 for n in self.pooled])
            columns = [torch.arange(index[n] * d, (index[n] + 1) * d) for n in dense]
            blocks = [slice(index[n] * d, (index[n] + 1) * d) for n in self.numeric]

            def rows_of(weight: torch.Tensor) -> torch.Tensor:
                """``weight`` [out, F*d] as the [len(u), out] matrix that multiplies u."""
                parts = [weight[:, c].t() for c in columns]
                parts += [(weight[:, b] @ emb.scales[n]).unsqueeze(0) for n, b in zip(self.numeric, blocks)]
                return torch.cat(parts).clone()

            self.register_buffer("gate_weight", rows_of(gate_w))  # [U, F]
            self.register_buffer("gate_bias", gate_b.clone())
            self.register_buffer("first_weight", rows_of(first.weight))  # [U, H]
            self.register_buffer("first_bias", first.bias.clone())
            expand = torch.zeros(len(fields), len(owner))
            expand[torch.tensor(owner, dtype=torch.long), torch.arange(len(owner))] = 1.0
            self.register_buffer("expand", expand)  # gate [B, F] -> one weight per column of u
        rest = list(model.mlp.net)[list(model.mlp.net).index(first) + 1:]
        self.rest = copy.deepcopy(nn.Sequential(*[m for m in rest if not isinstance(m, nn.Dropout)]))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B]``."""
        parts = []
        if self.categorical:
            codes = torch.stack([inputs[n] + o if o else inputs[n] for n, o in zip(self.categorical, self.offsets)],
                                dim=1)
            parts.append(nn.functional.embedding(codes, self.table).flatten(1))
        for name, table in zip(self.pooled, self.pooled_tables):
            parts.append(masked_mean(table(inputs[name]), inputs[name]))
        if self.numeric:
            parts.append(torch.stack([inputs[n] for n in self.numeric], dim=1))
        u = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        s = torch.sigmoid(torch.addmm(self.gate_bias, u, self.gate_weight))
        first = torch.addmm(self.first_bias, u * (s @ self.expand), self.first_weight)
        return self.rest(first).squeeze(-1)
