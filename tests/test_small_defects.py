"""Defects found while tidying the house: each stays fixed."""

from __future__ import annotations

import typing

from medseg_auto.paths import DataHome
from medseg_auto.training.trainers.exchangeable_feature_discrepancy import ExchangeableFeatureDiscrepancy
from medseg_auto.training.trainers.feature_discrepancy import FeatureDiscrepancy


def test_exchangeable_layer_terms_count_is_a_tensor_like_its_parents():
    exchangeable = typing.get_type_hints(ExchangeableFeatureDiscrepancy.layer_terms)["return"]
    parent = typing.get_type_hints(FeatureDiscrepancy.layer_terms)["return"]
    assert exchangeable == parent


def test_new_dataset_folder_reuses_the_folder_of_a_name_already_used(tmp_path):
    home = DataHome(tmp_path)
    first = home.new_dataset_folder("Cubes", 601)
    first.mkdir(parents=True)
    assert home.new_dataset_folder("Cubes") == first == home.new_dataset_folder("Cubes", 777)
