"""Jobs over the asset graph."""


from dagster import AssetSelection, define_asset_job

from assets.assets import trained_model, training_data

demo_job = define_asset_job("demo_job", selection=AssetSelection.all(), description="Ingest the digits, pin a snapshot, train.")
train_job = define_asset_job(
    "train_job",
    selection=AssetSelection.assets(training_data, trained_model),
    description="Pin a snapshot of the training table and train on it.",
)
