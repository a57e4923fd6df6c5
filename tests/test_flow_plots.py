"""Temperature grids and interpolations in z (ppgen.plots), for a flow and a VAE."""

import torch

from ppgen.models import VAE, RealNVP
from ppgen.models.flows import dequantize
from ppgen.plots import interpolation_grid, temperature_grid


def small_flow():
    return RealNVP(16, shape=(1, 4, 4), num_scales=2, hidden=8, blocks=1, num_levels=256)


def test_temperature_grid_draws_one_row_per_temperature_from_shared_noise(tmp_path):
    flow = small_flow()
    fig = temperature_grid(flow, (0.1, 1.0), tmp_path / "t.png", n=5, shape=(4, 4))
    assert [ax.get_ylabel() for ax in fig.axes] == ["T = 0.1", "T = 1"]
    assert (tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    # the T = 1 row is the flow's decoding of the seeded noise, scaled to [0, 1]
    z = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    shown = fig.axes[1].images[0].get_array()[1:5, 1:5]
    expected = (flow.decode(z) / 256)[0].reshape(4, 4).float()
    assert torch.allclose(torch.as_tensor(shown.data).float(), expected, atol=1e-5)
    fig = temperature_grid(VAE(16, z_dim=2, hidden=8), (0.5, 1.0), n=3, shape=(4, 4))
    assert len(fig.axes) == 2 and all(ax.images for ax in fig.axes)


def test_interpolation_grid_starts_and_ends_at_the_rows():
    flow = small_flow()
    x = dequantize(torch.randint(0, 256, (4, 16)).float())
    fig = interpolation_grid(flow, x[:2], x[2:], steps=5, shape=(4, 4))
    assert len(fig.axes) == 2
    canvas = torch.as_tensor(fig.axes[0].images[0].get_array().data)
    first, last = canvas[1:5, 1:5], canvas[1:5, 1 + 4 * 5: 1 + 4 * 5 + 4]
    assert torch.allclose(first.float(), (x[0] / 256).reshape(4, 4), atol=1e-3)  # f^-1(f(x0)) = x0
    assert torch.allclose(last.float(), (x[2] / 256).reshape(4, 4), atol=1e-3)
    fig = interpolation_grid(VAE(16, z_dim=2, hidden=8), (x[:1] > 128).float(), (x[1:2] > 128).float(), steps=4,
                             shape=(4, 4))
    assert len(fig.axes) == 1
