"""The harmonisation options a run fits and its image-normalised pass (the choice rule is
tested with the comparison, tests/tasks/evaluation/test_harmonisation.py)."""

from tasks.config import Settings
from tasks.features.radiomics import current_params_hash, load_params
from tasks.models.harmonise import harmonisation_options, image_pass_settings


def test_the_options_a_run_fits_and_its_image_normalised_pass():
    auto = Settings(harmonisation="auto")
    assert harmonisation_options(auto) == ("none", "image", "combat")
    assert harmonisation_options(Settings(harmonisation="combat")) == ("combat",)
    assert image_pass_settings(Settings(harmonisation="none")) is None
    assert image_pass_settings(Settings(harmonisation="combat")) is None
    image = image_pass_settings(auto)
    assert image.radiomics_params == auto.radiomics_params_normalised
    assert current_params_hash(image) != current_params_hash(auto)
    # The normalised pass differs from the main extraction in its intensity settings only.
    main, normalised = (load_params(p) for p in (auto.radiomics_params, image.radiomics_params))
    changed = {k for k in main["setting"].keys() | normalised["setting"].keys()}
    changed = {k for k in changed if main["setting"].get(k) != normalised["setting"].get(k)}
    assert changed == {"normalize", "normalizeScale", "removeOutliers"}
    assert normalised["setting"]["normalize"] is True and main["setting"]["normalize"] is False
    assert {k: v for k, v in main.items() if k != "setting"} == {
        k: v for k, v in normalised.items() if k != "setting"
    }
