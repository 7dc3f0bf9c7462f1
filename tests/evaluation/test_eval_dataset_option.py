"""Commands that work on a dataset accept --dataset: eval picks that dataset's latest run."""

from __future__ import annotations


def test_eval_takes_the_dataset_whose_latest_run_it_evaluates(cli, workdir):
    from tests.synth_data import make_dataset

    make_dataset(workdir, name="one", n_users=40, n_items=30)
    make_dataset(workdir, name="two", n_users=40, n_items=30)  # now the active dataset
    rc, _, err = cli("train", "-b", "lightgcn", "-d", "one", "--epochs", "1", "-n", "r1", "--threads", "1")
    assert rc == 0, err
    rc, out, err = cli("eval", "--dataset", "one", "--no-save")
    assert rc == 0 and "r1" in out, err
    rc, _, err = cli("eval", "--dataset", "two", "--run", "r1")
    assert rc == 2 and "trained on dataset 'one', not 'two'" in err and "Traceback" not in err
