#!/usr/bin/env bash
# Debian packages of a chips site, for DBAs who install without a Rust toolchain, in
# target/debian/:
#
#   postgresql-15-chips_<version>_<arch>.deb   the extension (`cargo pgrx package`, release): chips.so,
#                                               this version's install script, the upgrade scripts and
#                                               the install scripts of released versions
#   chipsd_<version>_<arch>.deb                 the sidecar: /usr/bin/chipsd, a systemd unit
#                                               (chipsd.service) and an example /etc/chips/chipsd.toml
#
#   bash scripts/package.sh           # build both
#   bash scripts/package.sh --test    # build, then install the extension package (dpkg -i), start a
#                                     # fresh private cluster, CREATE EXTENSION chips and make a
#                                     # payment; remove the package and put this tree's build back
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$REPO"
ensure_deps
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
PGV=$("$PG_CONFIG" --version | sed -n 's/^PostgreSQL \([0-9]*\).*/\1/p')
OUT=$REPO/target/debian
rm -rf "$OUT"
mkdir -p "$OUT"
EXT_PKG=postgresql-$PGV-chips
EXT_DEB=$OUT/${EXT_PKG}_${VERSION}_${ARCH}.deb
SIDE_DEB=$OUT/chipsd_${VERSION}_${ARCH}.deb

say "the extension package: cargo pgrx package (release)"
root=$OUT/$EXT_PKG
(cd extension && cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$root") \
    >"$REPO/target/pgrx-package.log" 2>&1 || { tail -50 "$REPO/target/pgrx-package.log"; exit 1; }
install_released "$root"
install -D -m 644 README.md "$root/usr/share/doc/$EXT_PKG/README.md"
for d in sql-api operations architecture; do
    install -D -m 644 "docs/$d.md" "$root/usr/share/doc/$EXT_PKG/$d.md"
done
mkdir -p "$root/DEBIAN"
cat >"$root/DEBIAN/control" <<EOF
Package: $EXT_PKG
Version: $VERSION
Architecture: $ARCH
Maintainer: chips developers <chips@localhost>
Depends: postgresql-$PGV, libc6
Section: database
Priority: optional
Description: chips: mutual credit inside PostgreSQL $PGV
 Tallies (bilateral credit relationships), chits (signed IOUs) and credit lifts,
 as a PostgreSQL extension: CREATE EXTENSION chips makes a database a chips site.
 Upgrade an existing site with ALTER EXTENSION chips UPDATE.
EOF
dpkg-deb --root-owner-group --build "$root" "$EXT_DEB" >/dev/null

say "the chipsd package: cargo build --release -p chipsd"
cargo build -q --release -p chipsd
root=$OUT/chipsd
install -D -m 755 target/release/chipsd "$root/usr/bin/chipsd"
strip "$root/usr/bin/chipsd" 2>/dev/null || true
install -D -m 644 packaging/chipsd/chipsd.service "$root/lib/systemd/system/chipsd.service"
install -D -m 640 packaging/chipsd/chipsd.toml "$root/etc/chips/chipsd.toml"
install -D -m 644 docs/operations.md "$root/usr/share/doc/chipsd/operations.md"
install -D -m 644 docs/protocol.md "$root/usr/share/doc/chipsd/protocol.md"
mkdir -p "$root/DEBIAN"
install -m 755 packaging/chipsd/postinst "$root/DEBIAN/postinst"
echo /etc/chips/chipsd.toml >"$root/DEBIAN/conffiles"
cat >"$root/DEBIAN/control" <<EOF
Package: chipsd
Version: $VERSION
Architecture: $ARCH
Maintainer: chips developers <chips@localhost>
Depends: libc6, adduser
Recommends: $EXT_PKG
Section: net
Priority: optional
Description: chips sidecar: peer relay and user gateway of a chips site
 Relays Noise-encrypted traffic between chips sites and websocket clients into
 the site's database, which holds all state. Configure /etc/chips/chipsd.toml,
 make the agent key (chipsd keygen --out /etc/chips/agent.key), then
 systemctl enable --now chipsd.
EOF
dpkg-deb --root-owner-group --build "$root" "$SIDE_DEB" >/dev/null
ls -l "$EXT_DEB" "$SIDE_DEB"

[ "${1:-}" = "--test" ] || exit 0

say "the chipsd package: its files, and the binary runs"
contents=$(dpkg-deb -c "$SIDE_DEB")
for f in ./usr/bin/chipsd ./lib/systemd/system/chipsd.service ./etc/chips/chipsd.toml; do
    grep -q " $f\$" <<<"$contents" || { echo "chipsd package lacks $f" >&2; exit 1; }
done
x=$(mktemp -d)
dpkg-deb -x "$SIDE_DEB" "$x"
"$x/usr/bin/chipsd" --help | grep -q "login-ticket" || { echo "the packaged chipsd does not run" >&2; exit 1; }
grep -q '^ExecStart=/usr/bin/chipsd run --config /etc/chips/chipsd.toml$' "$x/lib/systemd/system/chipsd.service"
rm -rf "$x"

say "the extension package: dpkg -i, a fresh cluster, CREATE EXTENSION chips and a payment"
dpkg -i "$EXT_DEB" >/dev/null
restore() {
    cluster_stop "$DIR"
    rm -rf "$DIR"
    dpkg -r "$EXT_PKG" >/dev/null 2>&1 || true
    install_extension   # this tree's build back in place, as the other commands expect
}
DIR=$(cluster_base)/package
PORT=${CHIPS_PACKAGE_PORT:-54360}
trap restore EXIT
cluster_fresh "$DIR" "$PORT"
psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres -d postgres <<'SQL'
CREATE DATABASE site;
\c site
CREATE EXTENSION chips;
SELECT chips.agent_register('mqgKOvyon0P2CX3WLun7WmRzKbJDZLU-CggZMAy5qVE', '127.0.0.1', 65430, local => true);
SELECT chips.contract_add('{"title": "Tally contract", "version": 1, "text": "IOUs in CHIPs."}') AS contract \gset
SELECT chips.user_create('Ann', cuid => 'ann', custodial => true) AS ann \gset
SELECT chips.user_create('Bob', cuid => 'bob', custodial => true) AS bob \gset
SELECT username AS bob_role FROM chips.users WHERE ent = :'bob' \gset
SELECT username AS ann_role FROM chips.users WHERE ent = :'ann' \gset
SET ROLE :"bob_role";
SELECT chips.tally_create('stock', :'contract', '{"limit": 5000}') AS t \gset
SELECT chips.ticket_create(:'t') AS ticket \gset
RESET ROLE;
SET ROLE :"ann_role";
SELECT chips.ticket_redeem(:'ticket');
RESET ROLE;
SET ROLE :"bob_role";
SELECT chips.tally_offer(:'t');
RESET ROLE;
SET ROLE :"ann_role";
SELECT chips.tally_accept(:'t');
SELECT chips.pay(:'t', 1250, 'from the package');
RESET ROLE;
DO $$
DECLARE v record;
BEGIN
    SELECT count(*) FILTER (WHERE NOT a.ok) AS bad INTO v
    FROM chips.tallies t, chips.tally_audit(t.tally_uuid) a WHERE t.side = 'stock';
    IF v.bad <> 0 THEN RAISE EXCEPTION 'tally_audit found % problems', v.bad; END IF;
    IF (SELECT net_good FROM chips.tallies WHERE side = 'stock') <> 1250 THEN
        RAISE EXCEPTION 'the payment is not on the tally';
    END IF;
END $$;
SELECT extversion FROM pg_extension WHERE extname = 'chips';
SQL
echo "the package installs, CREATE EXTENSION chips works and a payment is on its tally"
