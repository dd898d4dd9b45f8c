"""Stop takes effect inside a model pass (cud_core.engine.stopping), and what is kept resumes exactly."""
import threading

import pytest
import torch

from cud_core.engine.stopping import Interrupted, interruptible
from cud_core.pipeline.context import RunContext
from cud_core.pipeline.scoring import ScoreSettings, score_run
from cud_core.store.workspace import Workspace
from tests.test_scoring import SAMPLES


def test_a_pass_is_interrupted_in_forward_and_in_backward_and_the_hooks_go_away():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    x = torch.randn(2, 3)
    flag = {"stop": False}
    with interruptible(model, lambda: flag["stop"]):
        loss = model(x).sum()  # runs: the flag is down
        flag["stop"] = True
        with pytest.raises(Interrupted):
            loss.backward()  # raised by a gradient hook, before any parameter gets its gradient
        assert all(p.grad is None for p in model.parameters())
        with pytest.raises(Interrupted):
            model(x)
        # another thread using the same model is never interrupted
        out = []
        t = threading.Thread(target=lambda: out.append(model(x)))
        t.start()
        t.join()
        assert out and out[0].shape == (2, 1)
    assert model(x).shape == (2, 1)  # hooks removed on exit
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_a_scoring_batch_stopped_part_way_is_dropped_and_redone_on_resume(tiny_llama, tmp_path):
    settings = ScoreSettings(batch_size=5, steps=2, generation=False)
    reference = Workspace(tmp_path / "ref")
    done = reference.load_results(score_run(RunContext(tiny_llama, reference, "d"), SAMPLES, settings))
    ws = Workspace(tmp_path / "ws")
    reads = iter(range(10 ** 9))
    run = score_run(RunContext(tiny_llama, ws, "d", should_stop=lambda: next(reads) >= 40), SAMPLES, settings)
    assert ws.get_run(run)["status"] == "stopped" and ws.done_sample_ids(run) == set()
    assert score_run(RunContext(tiny_llama, ws, "d"), SAMPLES, settings) == run
    assert ws.load_results(run) == done


def test_an_unlearning_run_stopped_anywhere_is_marked_stopped_never_failed(tiny_llama, tmp_path):
    """Stop at any point (between steps, inside a pass, before training): the workspace says "stopped"
    (never "failed"), with the run's settings kept for a rerun."""
    from cud_core.engine.stopping import Stopped
    from cud_core.pipeline.unlearning import UnlearnSettings, unlearn

    for after in range(1, 80, 6):
        ws = Workspace(tmp_path / f"ws{after}")
        reads = iter(range(10 ** 9))
        started = []
        try:
            unlearn(RunContext(tiny_llama, ws, "d", should_stop=lambda: next(reads) >= after), SAMPLES[:3],
                    SAMPLES[3:], UnlearnSettings("npo", steps=4, lr=1e-3), on_run=started.append)
        except Stopped:  # a Stop outside the training loop ends the job with Stopped
            pass
        [run] = ws.list_runs("unlearn")
        assert started == [run["id"]] and run["status"] == "stopped", (after, run)
