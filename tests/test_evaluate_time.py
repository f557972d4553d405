"""An evaluation row is stamped with the time its weights were read from the shards, not the time
its evaluation ended: time to an accuracy must not include the evaluation's own latency."""

from ps_trainer.config import TrainConfig
from ps_trainer.core.shard import ShardState
from ps_trainer.trainer.evaluate import Evaluator
from ps_trainer.trainer.plan import prepare, shard_options
from ps_trainer.transport.inprocess import InProcessClient


def test_rows_carry_the_time_their_weights_were_read():
    plan = prepare(TrainConfig(model="digits_cnn", workers=1).validate())
    params, buffers = plan.layout.flatten(plan.model)
    shards = [ShardState(s.index, params[slice(*s.params)], buffers[slice(*s.buffers)],
                         **shard_options(plan)) for s in plan.layout.shards(2)]
    reads = []  # clock readings so far, at each forward the evaluation runs

    def clock() -> float:
        reads.append(None)
        return 100.0 * len(reads)

    evaluator = Evaluator(plan, InProcessClient(shards), clock=clock)
    forwards = []
    evaluator.model.register_forward_hook(lambda *_: forwards.append(len(reads)))
    rows = evaluator(step=7, t0=50.0)

    assert [(r["weights"], r["time"], r["elapsed"], r["step"]) for r in rows] == \
        [("raw", 100.0, 50.0, 7), ("polyak", 200.0, 150.0, 7)]
    # Every forward of the raw weights' evaluation ran after its row's clock reading, and every
    # one of the Polyak weights' (BatchNorm re-estimation included) after the second.
    assert forwards and forwards[0] == 1 and set(forwards) == {1, 2}
    assert 0.0 < rows[0]["top1"] <= 1.0 and 0.0 < rows[1]["top1"] <= 1.0
