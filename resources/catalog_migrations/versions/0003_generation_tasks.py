"""The generation queue: generation_tasks (SPEC "Control plane contracts").

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('generation_tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('task_type', sa.String(length=50), nullable=False),
    sa.Column('priority', sa.String(length=10), nullable=False),
    sa.Column('queen_id', sa.Integer(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('assigned_node', sa.String(length=200), nullable=True),
    sa.Column('assigned_gpu', sa.String(length=100), nullable=True),
    sa.Column('total_count', sa.Integer(), nullable=False),
    sa.Column('completed_count', sa.Integer(), nullable=False),
    sa.Column('approved_count', sa.Integer(), nullable=False),
    sa.Column('rejected_count', sa.Integer(), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False, comment="when it (re-)entered the queue; a retry's is after its back-off"),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('retry_count', sa.Integer(), nullable=False),
    sa.Column('max_retries', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_by', sa.String(length=100), nullable=True),
    sa.Column('k8s_job_name', sa.String(length=200), nullable=True),
    sa.CheckConstraint("priority IN ('critical', 'high', 'normal', 'low', 'idle')", name=op.f('ck_generation_tasks_priority_valid')),
    sa.CheckConstraint("status IN ('queued', 'assigned', 'running', 'quality_check', 'completed', 'failed', 'cancelled')", name=op.f('ck_generation_tasks_status_valid')),
    sa.ForeignKeyConstraint(['queen_id'], ['queens.id'], name=op.f('fk_generation_tasks_queen_id_queens')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_generation_tasks'))
    )
    op.create_index(op.f('ix_generation_tasks_status_queued_at'), 'generation_tasks', ['status', 'queued_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_generation_tasks_status_queued_at'), table_name='generation_tasks')
    op.drop_table('generation_tasks')
