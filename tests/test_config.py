import pytest

from stages.config import BaseConfig, DataConfig, ParamError, read_params


def test_project_params_are_valid():
    params = read_params()
    DataConfig.from_dict(params["data"])
    BaseConfig.from_dict(params["base"])


@pytest.mark.parametrize(
    "values, message",
    [
        ({"noise": {"typo": 1.5}}, "data.noise.typo: expected a rate in [0, 1], got 1.5"),
        ({"n_examples": 0}, "data.n_examples: expected an integer >= 2"),
        ({"backend": "gpt"}, "data.backend: expected offline or metaprompt"),
        ({"on_invalid": "skip"}, "data.on_invalid: expected error or drop"),
        ({"languages": []}, "data.languages: expected a non-empty list"),
        ({"typo_rate": 0.1}, "data.typo_rate: unknown key"),
        ({"quantity": {"max": 500}}, "data.quantity.max: expected an integer in 1..99"),
        ({"eval_seed": 42}, "data.eval_seed: expected a seed different from data.seed"),
        ({"metaprompt": {"base_url": "localhost:8080"}}, "data.metaprompt.base_url: expected an http(s) URL"),
    ],
)
def test_bad_data_params_name_the_key(values, message):
    with pytest.raises(ParamError) as err:
        DataConfig.from_dict(values)
    assert message in str(err.value)
    assert str(err.value).startswith("params.yaml: ")


def test_bad_base_dtype():
    with pytest.raises(ParamError, match="base.dtype: expected auto, float32, bfloat16 or float16"):
        BaseConfig.from_dict({"dtype": "int8"})
