import matplotlib.pyplot as plt

from common.plots import new_figure, save_figure


def test_save_figure_creates_the_folder_writes_a_png_and_closes_the_figure(tmp_path):
    fig, axes = new_figure(1, 2, figsize=(4, 2), squeeze=False)
    axes[0, 1].plot([0, 1], [1, 0])
    assert plt.fignum_exists(fig.number)
    path = save_figure(fig, tmp_path / "new" / "folder" / "curve.png", dpi=50)
    assert path == tmp_path / "new" / "folder" / "curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)
