"""Asset checks; the training-data check blocks the model from training on bad data."""


from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from assets.assets import TrainingData, training_data


@asset_check(asset=training_data, blocking=True, description="Rows present, no null labels, every declared class present.")
def training_data_is_trainable(training_data: TrainingData) -> AssetCheckResult:
    profile = training_data.profile
    problems = profile.problems()
    return AssetCheckResult(
        passed=not problems,
        severity=AssetCheckSeverity.ERROR,
        description="; ".join(problems) or "trainable",
        metadata={
            "snapshot_id": str(training_data.pinned.snapshot_id),
            "row_count": profile.row_count,
            "null_labels": profile.null_labels,
            "label_counts": MetadataValue.json(profile.class_counts),
        },
    )
