import pytest

from cud_core.data.samples import DataError, Sample, as_completion, fictitious_authors, load_data, needs_finetuning


def test_generator_is_seeded_and_well_formed():
    a, b = fictitious_authors(10, seed=0), fictitious_authors(10, seed=0)
    assert [(s.id, s.question, s.answer) for s in a] == [(s.id, s.question, s.answer) for s in b]
    assert [s.answer for s in fictitious_authors(10, seed=1)] != [s.answer for s in a]
    assert len(a) == 60 and len({s.id for s in a}) == 60 and len({s.meta["author"] for s in a}) == 10
    for s in a:
        assert s.meta["key"] in s.answer and s.meta["author"] in s.question
    assert len(load_data("builtin:fictitious-authors")) == 120
    assert len(load_data("builtin:fictitious-authors:3")) == 18
    assert needs_finetuning("builtin:fictitious-authors:3") and not needs_finetuning("builtin:world-facts")
    with pytest.raises(DataError, match="expected fictitious-authors:N"):
        load_data("builtin:fictitious-authors:many")
    with pytest.raises(DataError, match="number of authors"):
        load_data("builtin:fictitious-authors:0")


def test_score_command_fine_tunes_on_the_scenario_first(tmp_path, tiny_folder, monkeypatch, capsys):
    from cud_core.cli import main
    from cud_core.store.workspace import Workspace

    monkeypatch.setenv("CUD_CACHE_DIR", str(tmp_path / "cache"))
    args = ["score", "--model", str(tiny_folder), "--data", "builtin:fictitious-authors:2", "--workspace",
            str(tmp_path / "ws"), "--no-generation", "--steps", "1", "--edges", "10"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "fine-tuned on 12 samples" in err
    [run] = Workspace(tmp_path / "ws").list_runs("score")
    assert "+ft-" in run["model"]
    assert len(list((tmp_path / "cache" / "finetuned").iterdir())) == 1
    assert main(args) == 0  # the second time the fine-tuned model comes from the cache
    err = capsys.readouterr().err
    assert "loaded the fine-tuned model from the cache" in err and "epoch" not in err


def test_sixty_authors_are_distinct():
    from cud_core.data.samples import load_builtin

    samples = load_builtin("fictitious-authors:60")
    assert len(samples) == 360 and len({s.id for s in samples}) == 360
    assert len({s.meta["author"] for s in samples}) == 60


def test_fictitious_completions_make_the_asked_fact_the_answer():
    full = fictitious_authors(4)
    made = load_data("builtin:fictitious-authors-completion:4")
    assert [s.id for s in made] == [s.id for s in full] and needs_finetuning("builtin:fictitious-authors-completion:4")
    for s, f in zip(made, full):
        lead, key = s.meta["lead"], f.meta["key"]
        assert s.meta["full_answer"] == f.answer and f.answer.startswith(f"{lead} {s.answer}")
        assert s.answer == key  # every key here is whole words
    by_field = {s.id.split("-", 2)[2]: s for s in made[:6]}
    name = full[0].meta["author"]
    assert by_field["parents"].meta["lead"] == f"The father of {name} was a"  # the father's job, not the mother's
    assert by_field["birthplace"].meta["lead"] == f"{name} was born in"
    assert by_field["award"].meta["lead"] == f"{name} received the"
    # a father and mother with the same job: the first occurrence is the fact asked for
    twin = Sample("q?", "The father of A was a baker and the mother was a baker.", "t", {"key": "baker"})
    assert as_completion(twin, last=False).meta["lead"] == "The father of A was a"
    assert as_completion(twin).meta["lead"] == "The father of A was a baker and the mother was a"
    with pytest.raises(DataError, match="expected fictitious-authors-completion:N"):
        load_data("builtin:fictitious-authors-completion:x")
