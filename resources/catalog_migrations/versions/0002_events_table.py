"""events table: the HydraEvents every stage emits (SPEC "Control plane contracts").

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

"""

from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('events',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('event_type', sa.String(length=64), nullable=False),
    sa.Column('source', sa.String(length=200), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('correlation_id', sa.String(length=64), nullable=False, comment='the Dagster run'),
    sa.Column('causation_id', sa.String(length=64), nullable=True),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_events'))
    )
    op.create_index(op.f('ix_events_correlation_id_created_at'), 'events', ['correlation_id', 'created_at'], unique=False)
    op.create_index(op.f('ix_events_event_type_created_at'), 'events', ['event_type', 'created_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_events_event_type_created_at'), table_name='events')
    op.drop_index(op.f('ix_events_correlation_id_created_at'), table_name='events')
    op.drop_table('events')
