"""fencing epochs on leased jobs; 64-bit run event ids

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 20:20:00

`lease_epoch` is the fencing token: every claim increments it and every worker write names
it, so a worker that lost its lease (frozen past it, partitioned) cannot write any more.
`run_events.id` becomes BIGINT on PostgreSQL; on SQLite an INTEGER PRIMARY KEY is already
the 64-bit rowid, so nothing changes there.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LEASED = ('runs', 'sample_jobs')


def upgrade() -> None:
    for table in LEASED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('lease_epoch', sa.Integer(), server_default='0', nullable=False))
    if op.get_bind().dialect.name != 'sqlite':
        op.alter_column('run_events', 'id', type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False, autoincrement=True)
        op.execute('ALTER SEQUENCE IF EXISTS run_events_id_seq AS BIGINT')


def downgrade() -> None:
    if op.get_bind().dialect.name != 'sqlite':
        op.execute('ALTER SEQUENCE IF EXISTS run_events_id_seq AS INTEGER')
        op.alter_column('run_events', 'id', type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=False, autoincrement=True)
    for table in LEASED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('lease_epoch')
