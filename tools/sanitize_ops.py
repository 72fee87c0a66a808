"""Every C++ CPU op of fresco_kernels once at small shapes, at 2 intra-op threads, for `make sanitize`'s valgrind run
(tools/sanitize.sh): each output is read back in full (a sum), so an element computed from uninitialised memory is
reported where it is used. Prints one line per op."""
import torch

import fresco_kernels as fk


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(2)
    assert fk.cpu_impls()["patch_synthesis"] == "cpp", fk.cpu_impls()
    ops = torch.ops.fresco
    x, flow = torch.randn(2, 3, 9, 11), torch.randn(2, 2, 9, 11) * 3
    g = torch.randn(2, 3, 9, 11)
    runs = {
        "flow_warp": lambda: ops.flow_warp(x, flow),
        "flow_warp_backward": lambda: ops.flow_warp_backward(g, x, flow, True, True),
        "flow_correspondence": lambda: ops.flow_correspondence(torch.randn(2, 2, 6, 7) * 2,
                                                               torch.rand(2, 6, 7) < 0.2, torch.rand(3, 3, 6, 7) * 2 - 1),
        "gram_loss": lambda: ops.gram_loss(torch.randn(2, 11, 6), torch.randn(2, 11, 6), "l1", 100.0, "ieee"),
        "gram_loss_fwd_bwd": lambda: ops.gram_loss_fwd_bwd(torch.randn(2, 11, 6), torch.randn(2, 11, 6), "l2", 100.0,
                                                           "ieee"),
        "warp_consistency_loss_fwd_bwd": lambda: ops.warp_consistency_loss_fwd_bwd(
            torch.randn(4, 3, 7, 9), torch.randn(2, 2, 7, 9), torch.randn(2, 2, 7, 9),
            (torch.rand(2, 1, 7, 9) < 0.3).float(), (torch.rand(2, 1, 7, 9) < 0.3).float(), 2),
        "trajectory_attention": lambda: ops.trajectory_attention(
            *(torch.randn(6, 20, 16) for _ in range(3)),
            torch.stack([torch.arange(20)] + [torch.randperm(20) for _ in range(2)]),
            torch.cumsum((torch.rand(3, 20) < 0.3).int() * (torch.arange(3) > 0).int()[:, None], 0).int(), 0.2, 2),
        "patch_synthesis": lambda: ops.patch_synthesis(
            (torch.rand(3, 20, 23) * 255).round(), (torch.rand(4, 20, 23) * 255).round(),
            (torch.rand(4, 19, 21) * 255).round(), torch.tensor([3, 3, 3, 1], dtype=torch.int32), 1, None, 3, 2, 2,
            1, 3, 50, 7),
    }
    for name, run in runs.items():
        out = run()
        outs = out if isinstance(out, (tuple, list)) else (out,)
        total = sum(float(o.double().sum()) for o in outs if isinstance(o, torch.Tensor) and o.numel())
        print(f"{name}: ok ({total:.6g})")


if __name__ == "__main__":
    main()
