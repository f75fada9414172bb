"""Bad input raises a TdakitError that says what is wrong and how to fix it."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tdakit as tda
from conftest import tiny_data, tiny_mlp
from tdakit import TdakitError


def fitted():
    model = tiny_mlp()
    X, y = tiny_data()
    return model, X, y, tda.GradDot(tda.Task(model)).fit((X, y))


def test_01_model_is_not_a_module() -> None:
    with pytest.raises(TdakitError, match="torch.nn.Module"):
        tda.Task(lambda x: x)


def test_02_unknown_loss() -> None:
    with pytest.raises(TdakitError, match="Unknown loss 'hinge'"):
        tda.Task(tiny_mlp(), loss="hinge")


def test_03_unknown_measurement() -> None:
    with pytest.raises(TdakitError, match="Unknown measurement 'accuracy'"):
        tda.Task(tiny_mlp(), measurement="accuracy")


def test_04_unknown_parameter_names() -> None:
    with pytest.raises(
        TdakitError, match=r"No trainable parameter or module named 'fc'.*\['0', '2'\]"
    ):
        tda.Task(tiny_mlp(), params=["fc"])


def test_05_no_trainable_parameters() -> None:
    model = tiny_mlp().requires_grad_(False)
    with pytest.raises(TdakitError, match="no trainable parameters"):
        tda.Task(model)


def test_06_empty_training_set() -> None:
    X, y = tiny_data()
    with pytest.raises(TdakitError, match="empty"):
        tda.GradDot(tda.Task(tiny_mlp())).fit((X[:0], y[:0]))


def test_07_length_mismatch() -> None:
    X, y = tiny_data()
    with pytest.raises(TdakitError, match="30 inputs but 29 targets"):
        tda.GradDot(tda.Task(tiny_mlp())).fit((X, y[:-1]))


def test_08_nan_inputs() -> None:
    X, y = tiny_data()
    X[3, 1] = float("nan")
    with pytest.raises(TdakitError, match="NaN or inf"):
        tda.GradDot(tda.Task(tiny_mlp())).fit((X, y))


def test_09_float_labels_for_cross_entropy() -> None:
    X, y = tiny_data()
    with pytest.raises(TdakitError, match=r"integer class labels.*y.long\(\)"):
        tda.GradDot(tda.Task(tiny_mlp())).fit((X, y.double()))


def test_10_dtype_mismatch_between_data_and_model() -> None:
    X, y = tiny_data()
    with pytest.raises(TdakitError, match=r"cast them with X.to\(torch.float64\)"):
        tda.GradDot(tda.Task(tiny_mlp())).fit((X.float(), y))


def test_11_scores_before_fit() -> None:
    X, y = tiny_data()
    with pytest.raises(TdakitError, match=r"not fitted: call .fit\(train\) first"):
        tda.GradDot(tda.Task(tiny_mlp())).scores((X, y))


def test_12_query_shape_mismatch() -> None:
    _, X, y, method = fitted()
    msg = r"could not run on a batch of query inputs.*queries must look like the training inputs"
    with pytest.raises(tda.DataError, match=msg):
        method.scores((X[:, :4], y))
    assert method.task.gradient_paths == {"train": "layers"}  # no slower path for good
    assert torch.equal(method.scores((X, y)), fitted()[3].scores((X, y)))
    similarity = tda.RepresentationSimilarity(tda.Task(tiny_mlp())).fit((X, y))
    with pytest.raises(tda.DataError, match="could not run on a batch of inputs"):
        similarity.scores((X[:, :4], y))


def test_13_bad_k() -> None:
    _, X, y, method = fitted()
    for k in (0, 31):
        with pytest.raises(TdakitError, match="k must be an int between 1 and"):
            method.top_k((X, y), k=k)


def test_14_non_finite_gradient_names_the_example() -> None:
    model = tiny_mlp()
    model[1] = nn.Identity()  # linear model: a huge but finite input overflows the loss
    X, _ = tiny_data()
    X[7] = 1e200
    with pytest.raises(TdakitError, match="Non-finite gradient for example 7"):
        tda.GradDot(tda.Task(model, loss="mse")).fit((X, torch.zeros(len(X), 3)))


def test_15_tracin_checkpoint_lr_mismatch_and_bad_lr() -> None:
    model = tiny_mlp()
    task = tda.Task(model)
    with pytest.raises(TdakitError, match="2 checkpoints but 1 learning rates"):
        tda.TracIn(task, [model.state_dict()] * 2, [0.1])
    with pytest.raises(TdakitError, match="positive and finite"):
        tda.TracIn(task, [model.state_dict()], [-0.1])
    with pytest.raises(TdakitError, match="at least one checkpoint"):
        tda.TracIn(task, [], [])


def test_16_checkpoint_of_another_architecture() -> None:
    task = tda.Task(tiny_mlp())
    with pytest.raises(TdakitError, match="does not fit the task's model"):
        tda.TracIn(task, [tiny_mlp(hidden=9).state_dict()], [0.1])


def test_17_shuffled_dataloader() -> None:
    X, y = tiny_data()
    loader = DataLoader(TensorDataset(X, y), batch_size=8, shuffle=True)
    with pytest.raises(TdakitError, match="shuffle=False"):
        tda.GradDot(tda.Task(tiny_mlp())).fit(loader)


def test_18_unknown_representation_layer() -> None:
    X, y = tiny_data()
    method = tda.RepresentationSimilarity(tda.Task(tiny_mlp()), layer="encoder")
    with pytest.raises(TdakitError, match="No module named 'encoder'"):
        method.fit((X, y))


def test_19_loss_not_per_example() -> None:
    X, y = tiny_data()
    task = tda.Task(tiny_mlp(), loss=lambda out, t: nn.functional.cross_entropy(out, t))
    with pytest.raises(TdakitError, match="reduction='none'"):
        tda.GradDot(task).fit((X, y))


def test_20_unsupported_data_container() -> None:
    with pytest.raises(TdakitError, match=r"Pass a tuple \(X, y\)"):
        tda.GradDot(tda.Task(tiny_mlp())).fit({"X": 1})


def test_21_not_a_task() -> None:
    with pytest.raises(TdakitError, match=r"wrap your model with tda.Task"):
        tda.GradDot(tiny_mlp())


def test_22_bad_block_size() -> None:
    with pytest.raises(TdakitError, match="block_size must be a positive int"):
        tda.GradDot(tda.Task(tiny_mlp()), block_size=0)


def test_23_mse_target_shape() -> None:
    X, _ = tiny_data()
    with pytest.raises(TdakitError, match="mse targets of shape"):
        tda.GradDot(tda.Task(tiny_mlp(), loss="mse")).fit((X, torch.zeros(len(X), 5)))
