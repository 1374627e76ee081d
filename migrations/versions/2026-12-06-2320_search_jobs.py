"""Search jobs: jobs.parent_id (a candidate's search) and jobs.search (what its first attempt
found: the sensitivity table, the candidates, the deadline)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 23:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("parent_id", sa.Uuid(), nullable=True))
    op.create_foreign_key(
        "fk_jobs_parent_id_jobs", "jobs", "jobs", ["parent_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index("ix_jobs_parent_id", "jobs", ["parent_id"], unique=False)
    op.add_column(
        "jobs",
        sa.Column(
            "search",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
    )


def downgrade() -> None:
    op.drop_column("jobs", "search")
    op.drop_index("ix_jobs_parent_id", table_name="jobs")
    op.drop_constraint("fk_jobs_parent_id_jobs", "jobs", type_="foreignkey")
    op.drop_column("jobs", "parent_id")
