"""megatron's pipeline p2p, with the shape exchange of a two-stage interleaved pipeline put in order.

With variable sequence lengths every p2p call first exchanges shapes. megatron-core 0.16's
`P2PCommunicator._communicate_shapes` batches [send prev, recv prev, send next, recv next]: at
pp=2 the previous and the next stage are one peer, which posts its receives in the mirrored
order, so a call that sends both an activation and a gradient (the interleaved schedule's steady
state) delivers each shape as the other's. The tensors themselves travel in order (unbatched
`_p2p_ops`, forward first). Here the shapes do too: the forward pair, then the backward pair.
"""

from __future__ import annotations

from megatron.core.pipeline_parallel.p2p_communication import P2PCommunicator
from torch import Tensor


class OrderedShapesP2P(P2PCommunicator):
    """megatron's P2PCommunicator whose shape exchange pairs correctly when both neighbours are one rank."""

    def _communicate_shapes(
        self, tensor_send_next: Tensor | None, tensor_send_prev: Tensor | None, recv_prev: bool, recv_next: bool
    ) -> tuple[list[int], list[int]]:
        if self.prev_rank != self.next_rank:
            return super()._communicate_shapes(tensor_send_next, tensor_send_prev, recv_prev, recv_next)
        recv_prev_shape, _ = super()._communicate_shapes(tensor_send_next, None, recv_prev, False)
        _, recv_next_shape = super()._communicate_shapes(None, tensor_send_prev, False, recv_next)
        return recv_prev_shape, recv_next_shape
