"""AlgoPerf "ogbg": a graph network predicting ogbg-molpcba molecular properties, as a workload.

    memprof estimate examples/algoperf/ogbg.py:workload --batch-size 512

The AlgoPerf GNN (algoperf/workloads/ogbg/ogbg_pytorch/models.py, the workload's defaults): node
(9 features) and edge (3 features) embedders to 256, 5 message-passing steps of a GraphNetwork
(Battaglia et al. 2018, Algorithm 1, with sender and receiver aggregations kept apart) whose edge,
node and global updates are Dense(256) + LayerNorm + ReLU + dropout 0.1, globals starting at zeros
of width 128, a 128-way decoder of the globals — 3,554,176 parameters (its PyTorch reference
instantiated, counted). Sums over edges and nodes are index_add_ scatters: no torch_geometric.

Inputs: a padded batch as the reference's input pipeline builds it: 26 nodes and 56 edges per graph
on average (AVG_NODES_PER_GRAPH, AVG_EDGES_PER_GRAPH in algoperf/workloads/ogbg/input_pipeline.py),
here exactly that many per graph, random features and random edges inside each graph; 128 binary
labels per graph with a mask (ogbg-molpcba's missing labels); loss: masked sigmoid cross-entropy.

Batch size: 512 graphs (algorithms/target_setting_algorithms/get_batch_size.py,
mlcommons/algorithmic-efficiency).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BATCH_SIZE = 512
NODES_PER_GRAPH, EDGES_PER_GRAPH = 26, 56
NODE_FEATURES, EDGE_FEATURES = 9, 3
SIZES = {
    "full": dict(latent=256, steps=5, outputs=128),
    "tiny": dict(latent=16, steps=2, outputs=8),
}


class MLP(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.dense_0 = nn.Linear(cin, cout)
        self.norm_0 = nn.LayerNorm(cout, eps=1e-6)
        self.dropout = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(F.relu(self.norm_0(self.dense_0(x))))


def scatter_sum(x: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    return x.new_zeros(size, x.shape[1]).index_add_(0, index, x)


class GraphNetwork(nn.Module):
    def __init__(self, latent: int, global_width: int) -> None:
        super().__init__()
        self.update_edge_fn = MLP(3 * latent + global_width, latent)
        self.update_node_fn = MLP(3 * latent + global_width, latent)
        self.update_global_fn = MLP(2 * latent + global_width, latent)

    def forward(
        self,
        nodes: torch.Tensor,
        edges: torch.Tensor,
        globals_: torch.Tensor,
        senders: torch.Tensor,
        receivers: torch.Tensor,
        node_graph: torch.Tensor,
        edge_graph: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n_node, n_graph = nodes.shape[0], globals_.shape[0]
        edges = self.update_edge_fn(torch.cat([edges, nodes[senders], nodes[receivers], globals_[edge_graph]], dim=-1))
        sent = scatter_sum(edges, senders, n_node)
        received = scatter_sum(edges, receivers, n_node)
        nodes = self.update_node_fn(torch.cat([nodes, sent, received, globals_[node_graph]], dim=-1))
        pooled_nodes = scatter_sum(nodes, node_graph, n_graph)
        pooled_edges = scatter_sum(edges, edge_graph, n_graph)
        globals_ = self.update_global_fn(torch.cat([pooled_nodes, pooled_edges, globals_], dim=-1))
        return nodes, edges, globals_


class GNN(nn.Module):
    def __init__(self, latent: int, steps: int, outputs: int) -> None:
        super().__init__()
        self.outputs = outputs
        self.node_embedder = nn.Linear(NODE_FEATURES, latent)
        self.edge_embedder = nn.Linear(EDGE_FEATURES, latent)
        self.graph_network = nn.ModuleList([GraphNetwork(latent, outputs if i == 0 else latent) for i in range(steps)])
        self.decoder = nn.Linear(latent, outputs)

    def forward(
        self,
        nodes: torch.Tensor,
        edges: torch.Tensor,
        senders: torch.Tensor,
        receivers: torch.Tensor,
        node_graph: torch.Tensor,
        edge_graph: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        # labels only give the number of graphs (its shape); the globals start at zeros
        globals_ = nodes.new_zeros(labels.shape[0], self.outputs)
        nodes, edges = self.node_embedder(nodes), self.edge_embedder(edges)
        for step in self.graph_network:
            nodes, edges, globals_ = step(nodes, edges, globals_, senders, receivers, node_graph, edge_graph)
        return self.decoder(globals_)


def workload(batch_size: int = BATCH_SIZE, size: str = "full") -> dict[str, object]:
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    cfg = SIZES[size]
    model = GNN(**cfg)
    device = model.decoder.weight.device
    n_nodes, n_edges = batch_size * NODES_PER_GRAPH, batch_size * EDGES_PER_GRAPH
    edge_graph = torch.arange(batch_size, device=device).repeat_interleave(EDGES_PER_GRAPH)
    first_node = edge_graph * NODES_PER_GRAPH  # edges stay inside their graph
    inputs = {
        "nodes": torch.randn(n_nodes, NODE_FEATURES, device=device),
        "edges": torch.randn(n_edges, EDGE_FEATURES, device=device),
        "senders": first_node + torch.randint(0, NODES_PER_GRAPH, (n_edges,), device=device),
        "receivers": first_node + torch.randint(0, NODES_PER_GRAPH, (n_edges,), device=device),
        "node_graph": torch.arange(batch_size, device=device).repeat_interleave(NODES_PER_GRAPH),
        "edge_graph": edge_graph,
        "labels": torch.randint(0, 2, (batch_size, cfg["outputs"]), device=device).float(),
    }
    mask = torch.rand(batch_size, cfg["outputs"], device=device) < 0.9  # some labels missing

    def loss(logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        per_label = F.binary_cross_entropy_with_logits(logits, inputs["labels"], reduction="none")
        return (per_label * mask).sum() / mask.sum()

    return {"model": model, "inputs": inputs, "loss": loss}
