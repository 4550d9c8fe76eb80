"""The catalog tables as main created them with create_all (the baseline).

A database created before Alembic has exactly these tables and is stamped with this revision
instead of running it (resources.catalog_schema.upgrade_schema).

Revision ID: 0001
Revises:
Create Date: 2026-12-01

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('queens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=100), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('tier', sa.String(length=20), nullable=False),
    sa.Column('physical_dna', sa.JSON(), nullable=False),
    sa.Column('personality_dna', sa.JSON(), nullable=False),
    sa.Column('voice_dna', sa.JSON(), nullable=False),
    sa.Column('generation_config', sa.JSON(), nullable=False),
    sa.Column('portrait_count', sa.Integer(), nullable=False),
    sa.Column('expression_count', sa.Integer(), nullable=False),
    sa.Column('pose_count', sa.Integer(), nullable=False),
    sa.Column('voice_line_count', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=32), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('draft', 'reference_ready', 'lora_training', 'lora_ready', 'generation_active', 'complete')", name=op.f('ck_queens_status_valid')),
    sa.CheckConstraint("tier IN ('alpha', 'elite', 'core', 'exotic', 'specialist', 'legacy')", name=op.f('ck_queens_tier_valid')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_queens')),
    sa.UniqueConstraint('slug', name=op.f('uq_queens_slug'))
    )
    op.create_table('generated_assets',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('queen_id', sa.Integer(), nullable=False),
    sa.Column('asset_type', sa.String(length=50), nullable=False),
    sa.Column('file_path', sa.String(length=1024), nullable=False),
    sa.Column('file_size', sa.BigInteger(), nullable=True),
    sa.Column('file_hash', sa.String(length=64), nullable=True, comment='sha256, hex'),
    sa.Column('aesthetic_score', sa.Float(), nullable=True),
    sa.Column('technical_score', sa.Float(), nullable=True),
    sa.Column('face_match_score', sa.Float(), nullable=True),
    sa.Column('composite_score', sa.Float(), nullable=True),
    sa.Column('approved', sa.Boolean(), nullable=False),
    sa.Column('approval_method', sa.String(length=10), nullable=True),
    sa.Column('rejection_reason', sa.String(length=200), nullable=True),
    sa.Column('generation_params', sa.JSON(), nullable=True),
    sa.Column('prompt_used', sa.Text(), nullable=True),
    sa.Column('seed', sa.BigInteger(), nullable=True),
    sa.Column('generated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('approved_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("approval_method IN ('auto', 'manual')", name=op.f('ck_generated_assets_approval_method_valid')),
    sa.ForeignKeyConstraint(['queen_id'], ['queens.id'], name=op.f('fk_generated_assets_queen_id_queens')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generated_assets')),
    sa.UniqueConstraint('file_path', name=op.f('uq_generated_assets_file_path'))
    )
    op.create_index(op.f('ix_generated_assets_queen_id_asset_type'), 'generated_assets', ['queen_id', 'asset_type'], unique=False)
    op.create_table('lora_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('queen_id', sa.Integer(), nullable=False),
    sa.Column('model_name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('base_model', sa.String(length=200), nullable=True),
    sa.Column('network_dim', sa.Integer(), nullable=True),
    sa.Column('network_alpha', sa.Float(), nullable=True),
    sa.Column('training_config', sa.JSON(), nullable=True),
    sa.Column('training_images', sa.Integer(), nullable=True, comment='how many images it was trained on'),
    sa.Column('training_steps', sa.Integer(), nullable=True),
    sa.Column('final_loss', sa.Float(), nullable=True),
    sa.Column('model_path', sa.String(length=1024), nullable=True),
    sa.Column('model_size', sa.BigInteger(), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('test_scores', sa.JSON(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('training', 'ready', 'failed')", name=op.f('ck_lora_models_status_valid')),
    sa.ForeignKeyConstraint(['queen_id'], ['queens.id'], name=op.f('fk_lora_models_queen_id_queens')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lora_models')),
    sa.UniqueConstraint('queen_id', 'version', name=op.f('uq_lora_models_queen_id_version'))
    )
    op.create_table('quality_metrics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('granularity', sa.String(length=10), nullable=False),
    sa.Column('queen_id', sa.Integer(), nullable=True, comment='null: all queens'),
    sa.Column('task_type', sa.String(length=50), nullable=False),
    sa.Column('total_generated', sa.Integer(), nullable=False),
    sa.Column('total_approved', sa.Integer(), nullable=False),
    sa.Column('total_rejected', sa.Integer(), nullable=False),
    sa.Column('approval_rate', sa.Float(), nullable=True),
    sa.Column('score_distributions', sa.JSON(), nullable=True),
    sa.Column('rejection_breakdown', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("granularity IN ('hourly', 'daily', 'weekly')", name=op.f('ck_quality_metrics_granularity_valid')),
    sa.ForeignKeyConstraint(['queen_id'], ['queens.id'], name=op.f('fk_quality_metrics_queen_id_queens')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quality_metrics'))
    )
    op.create_index('uq_quality_metrics_period', 'quality_metrics', ['period_start', 'granularity', sa.literal_column('coalesce(queen_id, 0)'), 'task_type'], unique=True)
    op.create_table('voice_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('queen_id', sa.Integer(), nullable=False),
    sa.Column('model_type', sa.String(length=20), nullable=False),
    sa.Column('reference_clips', sa.JSON(), nullable=False),
    sa.Column('total_reference_duration', sa.Float(), nullable=True, comment='seconds'),
    sa.Column('model_path', sa.String(length=1024), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('similarity_score', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("model_type IN ('gpt-sovits', 'kokoro', 'xtts', 'rvc', 'espeak')", name=op.f('ck_voice_models_model_type_valid')),
    sa.CheckConstraint("status IN ('pending', 'training', 'ready', 'failed')", name=op.f('ck_voice_models_status_valid')),
    sa.ForeignKeyConstraint(['queen_id'], ['queens.id'], name=op.f('fk_voice_models_queen_id_queens')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_voice_models')),
    sa.UniqueConstraint('queen_id', 'model_type', name=op.f('uq_voice_models_queen_id_model_type'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('voice_models')
    op.drop_index('uq_quality_metrics_period', table_name='quality_metrics')
    op.drop_table('quality_metrics')
    op.drop_table('lora_models')
    op.drop_index(op.f('ix_generated_assets_queen_id_asset_type'), table_name='generated_assets')
    op.drop_table('generated_assets')
    op.drop_table('queens')
