#!/usr/bin/env bash
# pg_regress's launcher for the golden SQL tests (scripts/regress.sh): runs the psql command it
# is given and writes its output with every value made at random replaced by a placeholder of
# the same length, so a golden file may show a tally's uuid, a ticket or a signature and still
# print the same on every run: uuids (U), document dates (D), and base64url words of the lengths
# of tokens (32), keys, agents and digests (43) and signatures (86) (B; not a run of dashes,
# such as psql's rule under a header). The same rule is
# `shape` in tests/tests/sql_api_docs.rs, which checks docs/sql-api.md against these files.
set -o pipefail
"$@" 2>&1 | perl -pe '
    s/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/"U" x 36/ge;
    s/\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/"D" x 24/ge;
    s/(?<![A-Za-z0-9_-])([A-Za-z0-9_-]+)(?![A-Za-z0-9_-])/my $w = $1; my $n = length($w); ($w =~ m{[A-Za-z0-9]} && ($n == 32 || $n == 43 || $n == 86)) ? "B" x $n : $w/ge;
'
