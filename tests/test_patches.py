"""Patch grid, quality filter, lazy dataset on real rasters, scene-level split, augmentation."""

import tracemalloc

import numpy as np
import pytest
import torch

from sar_ae_core.errors import SarInputError
from training.patches import (PatchFilter, PatchSource, SarPatchDataset, dihedral, patch_origins,
                                 require_patches, scene_key, split_scenes)
from sar_ae_core.io.raster import mosaic_vrt
from sar_ae_core.scaling import ScalingParams, fit_scaling

NO_FILTER = PatchFilter(min_std=0.0, max_invalid_fraction=1.0)


def test_patch_origins_cover_the_far_edge():
    assert patch_origins(512, 256, 128) == [0, 128, 256]
    assert patch_origins(837, 256, 256) == [0, 256, 512, 581]
    assert patch_origins(100, 256, 128) == [0]


def test_dataset_count_and_shapes_on_a_known_file(spain_db, kerala_dn):
    params = fit_scaling([spain_db])
    ds = SarPatchDataset([spain_db], params, size=256, stride=128, quality=NO_FILTER)
    assert len(ds) == 2 * 3 * 3  # two bands, 3x3 grid
    item = ds[4]
    assert item["image"].shape == (1, 256, 256) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 256, 256) and float(item["mask"].min()) == 1.0
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    ds_k = SarPatchDataset([kerala_dn], fit_scaling([kerala_dn]), size=256, stride=256, quality=NO_FILTER)
    assert len(ds_k) == 4 * 5


def test_quality_filter_rejects_nodata_border_patches(kerala_dn):
    params = fit_scaling([kerala_dn])
    strict = SarPatchDataset([kerala_dn], params, size=128, stride=128,
                             quality=PatchFilter(min_std=0.02, max_invalid_fraction=0.01))
    assert strict.rejected > 0 and len(strict) + strict.rejected == 7 * 10
    for i in range(len(strict)):
        assert strict[i]["mask"].mean() >= 0.99


def test_small_raster_is_padded_and_masked_not_rejected(opera_lin, camargue_db):
    params = fit_scaling([opera_lin])
    ds = SarPatchDataset([opera_lin], params, size=256)
    assert len(ds) == 1
    item = ds[0]
    assert int(item["mask"].sum()) == 100 * 100
    assert float(item["image"][0, 100:, :].abs().max()) == 0.0
    ds2 = SarPatchDataset([camargue_db], fit_scaling([camargue_db]), size=256, stride=128)
    assert len(ds2) == 2  # 217 rows -> one row of patches; 268 cols -> origins 0 and 12
    assert int(ds2[0]["mask"].sum()) == 217 * 256


def test_no_valid_patches_is_a_clear_error(tmp_path, opera_lin):
    params = ScalingParams(vmin_db=-30, vmax_db=0)
    ds = SarPatchDataset([opera_lin], params, size=64, quality=PatchFilter(min_std=0.9))
    with pytest.raises(SarInputError, match="no valid training patches in .*opera"):
        require_patches(ds, "training")


def test_split_keeps_scenes_together_and_never_overlaps(sar_data):
    files = sorted(str(p) for p in sar_data.glob("*.tif"))
    split = split_scenes(files, val_fraction=0.2, test_fraction=0.2, seed=3)
    assert sorted(sum(split.values(), [])) == files
    keys = {name: {scene_key(p) for p in ps} for name, ps in split.items()}
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    assert all(keys[n] for n in ("train", "val", "test"))
    assert scene_key("x/s1_opera_rtc_t137-292318-iw1_20211119_vh_lin.tif") == \
        scene_key("s1_opera_rtc_t137-292318-iw1_20211119_vv_lin.tif")
    assert scene_key("s1_bigearthnet_20170613T165043_33UUP_87_48_VH_db.tif") != \
        scene_key("s1_bigearthnet_20170617T064724_29UPU_4_55_VV_db.tif")
    assert split == split_scenes(list(reversed(files)), val_fraction=0.2, test_fraction=0.2, seed=3)


def test_augmentation_is_a_dihedral_transform_of_image_and_mask(opera_lin):
    a = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    outs = {dihedral(a, k).tobytes() for k in range(8)}
    assert len(outs) == 8
    ds = SarPatchDataset([opera_lin], fit_scaling([opera_lin]), size=128, augment=True)
    torch.manual_seed(0)
    items = [ds[0] for _ in range(12)]
    masks = {tuple(np.argwhere(it["mask"][0].numpy() > 0).min(0)) for it in items}
    assert len(masks) > 1  # padding moved to different corners
    for it in items:  # image zero exactly where the mask marks padding
        assert float(it["image"][it["mask"] == 0].abs().max()) == 0.0


def test_large_scene_is_read_by_window_not_loaded(tmp_path, spain_db):
    vrt = mosaic_vrt(spain_db, tmp_path / "scene_25000x16000.vrt", 25000, 16000)
    params = ScalingParams(vmin_db=-30, vmax_db=0)
    tracemalloc.start()
    ds = SarPatchDataset([PatchSource(vrt, units="db")], params, size=256, stride=256, prefilter=False)
    assert len(ds) == 98 * 63  # ceil(25000/256)=98 cols incl. the flush edge, 63 rows
    batch = [ds[i]["image"] for i in (0, 1234, len(ds) - 1)]
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert all(b.shape == (1, 256, 256) for b in batch)
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB; the scene is {25000 * 16000 * 4 / 2**30:.1f} GiB"


def test_dataloader_with_workers(spain_db):
    ds = SarPatchDataset([spain_db], fit_scaling([spain_db]), size=128, stride=128, augment=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, shuffle=True)
    n = sum(batch["image"].shape[0] for batch in loader)
    assert n == len(ds) == 2 * 16
