"""The variants: one module each, every one a LightningModule on :class:`ae_lightning.base.AutoencoderModule`.

Importing a variant's module imports no other variant; ``ae_lightning.<Name>`` resolves each public one on first use."""
