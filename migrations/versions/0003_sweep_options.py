"""sweep options: seeds and max_fcd_increase

Revision ID: 0003_sweep_options
Revises: 0002
Create Date: 2026-12-01 21:20:00

A sweep request's settings that are not a point of its grid: the training seeds each point was
trained with (`seeds`) and the FCD increase a best setting may have (`max_fcd_increase`). The
report reads them back; NULL for sweeps made before (one seed, no allowance).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003_sweep_options'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('options', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('sweeps', schema=None) as batch_op:
        batch_op.drop_column('options')
