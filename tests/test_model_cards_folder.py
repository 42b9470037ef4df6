"""model_cards/: the card of every model a recipe produces, each exactly what the card code renders from the data
stored beside it (config.json, model_card_data.json), so a template or card-code change cannot drift from what users
are shown.

README.md and model_card_data.json are compared byte for byte with a fresh rendering. A plot is only required to be
there: PNG bytes depend on the matplotlib and FreeType versions (the file records its matplotlib version), so they
are not compared. Regenerate the folder with `python recipes/make_model_cards.py`.
"""

import shutil
from pathlib import Path

import pytest

from mrl_text.cards.card import PLOT_FILENAME

from .conftest import load_module

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def make_model_cards():
    return load_module(ROOT / "recipes" / "make_model_cards.py")


def test_every_recipe_config_has_its_card(make_model_cards):
    read_recipe = load_module(ROOT / "recipes" / "recipe_config.py").read_recipe
    # Every recipe's configs: train_bert, train_align and pretrain_mlm (mlm_*.yaml).
    configs = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))
    expected = {Path(read_recipe(path)["output_dir"]).name for path in configs}
    folders = {folder.name: folder for folder in make_model_cards.model_folders()}
    assert expected <= set(folders), f"no card in model_cards/ for {sorted(expected - set(folders))}"
    for name in expected:
        assert (folders[name] / "README.md").is_file() and (folders[name] / "config.json").is_file()
    # The demos' cards come from real runs: they carry measured results (model-index and the plot).
    for demo in ("demo.yaml", "align_digits.yaml", "mlm_demo.yaml"):
        folder = folders[Path(read_recipe(ROOT / "recipes" / "configs" / demo)["output_dir"]).name]
        assert "model-index:" in (folder / "README.md").read_text()
        assert (folder / PLOT_FILENAME).is_file()


@pytest.mark.slow
def test_committed_cards_are_what_the_card_code_renders(make_model_cards):
    problems = make_model_cards.stale_files()
    assert not problems, "\n".join(problems)


def test_a_stale_card_is_named_with_the_command_that_regenerates_it(make_model_cards, tmp_path):
    # quick: the card with the fewest plots to draw
    source = min(make_model_cards.model_folders(), key=lambda folder: len(list(folder.glob("*.png"))))
    folder = tmp_path / source.name
    shutil.copytree(source, folder)
    assert make_model_cards.stale_files(tmp_path) == []
    card = folder / "README.md"
    card.write_text(card.read_text().replace("Matryoshka", "Nested", 1))
    (folder / "old_plot.png").write_bytes(b"")
    problems = make_model_cards.stale_files(tmp_path)
    assert len(problems) == 2
    assert str(card) in problems[0] and "differs" in problems[0]
    assert "old_plot.png" in problems[1] and "left over" in problems[1]
    assert all("python recipes/make_model_cards.py" in problem for problem in problems)


def test_online_cards_follow_their_recipe_configs(make_model_cards, tmp_path):
    """The online configs' stored card data is what their YAML gives today: editing a config stales its card (until
    a real run's card replaces it)."""
    for fresh in make_model_cards.store_online(tmp_path):
        committed = make_model_cards.CARDS_DIR / fresh.name / "model_card_data.json"
        if make_model_cards.has_results(committed.parent):
            continue
        assert committed.is_file() and committed.read_text() == (fresh / "model_card_data.json").read_text(), (
            f"{committed} is not what its recipe config gives; regenerate with "
            "`python recipes/make_model_cards.py --store-online`"
        )
