"""Reading new publications by manifest id, without missing one that commits late.

Manifest ids come from a sequence, and on PostgreSQL a sequence hands out ids at insert
time, not at commit: while run A's publication (id 10) is still committing, run B's (id 11)
may already be visible. A reader that kept only "the greatest id seen" would move past 10
and never see it. :class:`PublicationCursor` also remembers the ids it skipped (the gaps)
and looks for them again on later reads, for :data:`MAX_GAP_READS` reads: long enough for a
transaction to commit, bounded because a rolled-back insert (also a publication that lost a
race, ``ON CONFLICT DO NOTHING``) leaves a gap forever.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from imageml_core.manifest.interface import ManifestRecord, Publications, Step

#: Reads a skipped id is looked for again (at a 30 s sensor interval: 10 minutes).
MAX_GAP_READS = 20
#: Only the newest ids can still be committing: older skipped ids are not tracked.
MAX_TRACKED_IDS = 1000


@dataclass(frozen=True)
class PublicationCursor:
    """``after``: the greatest manifest id read; ``gaps``: skipped id -> reads since."""

    after: int = 0
    gaps: Mapping[int, int] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: str | None) -> PublicationCursor:
        """The stored form: ``"<after>"`` without gaps, else JSON. Unreadable -> start."""
        if not raw:
            return cls()
        try:
            if raw.strip().isdigit():
                return cls(int(raw))
            doc = json.loads(raw)
            return cls(int(doc["after"]), {int(k): int(v) for k, v in doc["gaps"].items()})
        except (ValueError, TypeError, KeyError, AttributeError):
            return cls()

    def serialize(self) -> str:
        if not self.gaps:
            return str(self.after)
        return json.dumps({"after": self.after, "gaps": {str(k): v for k, v in self.gaps.items()}})

    def read(
        self, store: Publications, step: Step
    ) -> tuple[list[ManifestRecord], PublicationCursor]:
        """Publications of ``step`` not read before, in id order, and the next cursor.

        Every step's publications are read to tell a gap (an id not visible yet) from an
        id another step used."""
        start = min([self.after, *(gap - 1 for gap in self.gaps)])
        rows = store.manifests(None, after_id=start)
        seen = {m.id for m in rows}
        top = max([self.after, *seen])
        fresh = [
            m
            for m in rows
            if (m.id > self.after or m.id in self.gaps)
            and (m.stage, m.step) == (step.stage, step.name)
        ]
        candidates = set(self.gaps) | set(range(max(self.after, top - MAX_TRACKED_IDS) + 1, top))
        gaps = {
            gap: self.gaps.get(gap, 0) + 1
            for gap in sorted(candidates - seen)
            if self.gaps.get(gap, 0) + 1 <= MAX_GAP_READS
        }
        return fresh, PublicationCursor(top, gaps)
