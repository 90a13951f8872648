import warnings

import matplotlib.pyplot as plt

from common.plots import legend, new_figure, save_figure


def test_save_figure_creates_the_folder_writes_a_png_and_closes_the_figure(tmp_path):
    fig, axes = new_figure(1, 2, figsize=(4, 2), squeeze=False)
    axes[0, 1].plot([0, 1], [1, 0])
    assert plt.fignum_exists(fig.number)
    path = save_figure(fig, tmp_path / "new" / "folder" / "curve.png", dpi=50)
    assert path == tmp_path / "new" / "folder" / "curve.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(fig.number)


def test_a_legend_is_drawn_only_where_something_is_labelled():
    """A study's report draws its figures before every run has finished: an axes with nothing labelled gets no
    legend, and no matplotlib warning."""
    fig, (empty, drawn) = new_figure(1, 2)
    empty.plot([0, 1], [1, 0])  # a line without a label
    drawn.plot([0, 1], [0, 1], label="SimCLR")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        legend(empty, fontsize=7)
        legend(drawn, fontsize=7)
    assert empty.get_legend() is None
    assert [text.get_text() for text in drawn.get_legend().get_texts()] == ["SimCLR"]
    plt.close(fig)
