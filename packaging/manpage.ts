// Writes a section-8 manual page for a clusterf daemon from its -help text (on stdin), so the
// page lists exactly the flags of the binary being packaged.
//
//   clusterf-ipvs -help 2>&1 | bun packaging/manpage.ts clusterf-ipvs 0.6.0 2025-01-31 > clusterf-ipvs.8

const [name, version, date] = process.argv.slice(2);
if (!name || !version || !date) {
  console.error("usage: bun packaging/manpage.ts NAME VERSION YYYY-MM-DD < help-text");
  process.exit(2);
}

/** Text for a roff line: backslashes and hyphens escaped, a leading . or ' defused. */
function esc(text: string): string {
  const s = text.replace(/\\/g, "\\e").replace(/-/g, "\\-");
  return /^[.']/.test(s) ? `\\&${s}` : s;
}

const help = (await Bun.stdin.text()).replace(/\r/g, "");
const lines = help.split("\n");
const usageAt = lines.findIndex((l) => l.startsWith("Usage:"));
if (usageAt < 0) {
  console.error(`manpage: the -help text of ${name} has no "Usage:" line`);
  process.exit(1);
}
const summary = (lines[usageAt + 1] ?? "").trim();
const flags: { flag: string; text: string[] }[] = [];
for (const line of lines.slice(usageAt + 2)) {
  if (/^ {2}-\S/.test(line)) flags.push({ flag: line.trim(), text: [] });
  else if (/^\s{4,}\S/.test(line) && flags.length) flags[flags.length - 1]!.text.push(line.trim());
}
if (flags.length === 0) {
  console.error(`manpage: no flags found in the -help text of ${name}`);
  process.exit(1);
}

const defaults = name === "clusterf-ipvs" ? "/etc/default/clusterf-ipvs (/etc/sysconfig/clusterf-ipvs on RPM systems)" : `/etc/default/${name} (/etc/sysconfig/${name} on RPM systems)`;
const envVar = `${name.replace(/-/g, "_").toUpperCase()}_OPTS`;
const out: string[] = [
  `.TH ${esc(name.toUpperCase())} 8 "${date}" "clusterf ${esc(version)}" "System Administration"`,
  ".SH NAME",
  `${esc(name)} \\- ${esc(summary.replace(/\.$/, "").replace(/^./, (c) => c.toLowerCase()))}`,
  ".SH SYNOPSIS",
  `.B ${esc(name)}`,
  ".RI [ flags ]",
  ".SH DESCRIPTION",
  esc(summary),
  ".PP",
  "Flags are Go\\-style: \\fB\\-name=value\\fR, \\fB\\-name value\\fR or \\fB\\-\\-name=value\\fR; booleans as \\fB\\-name\\fR or \\fB\\-name=false\\fR.",
  "A bad flag or value prints one line and exits with status 2.",
  "Logs go to standard error, one line per event.",
  ".PP",
  `The packaged systemd unit \\fB${esc(name)}.service\\fR runs it with the flags in \\fB${esc(envVar)}\\fR from`,
  `${esc(defaults)}.`,
  ".SH OPTIONS",
];
for (const f of flags) {
  out.push(".TP", `.B ${esc(f.flag)}`, ...f.text.map(esc));
}
out.push(
  ".SH FILES",
  ".TP",
  ".B /etc/clusterf",
  "The local config tree (services/, routes/); see /etc/clusterf/.README.",
  ".TP",
  ".B /var/lib/clusterf",
  "State kept across restarts.",
  ".TP",
  ".B /usr/share/doc/clusterf",
  "README and an example config tree.",
  ".SH SEE ALSO",
  name === "clusterf-ipvs" ? ".BR clusterf\\-docker (8)," : ".BR clusterf\\-ipvs (8),",
  ".BR ipvsadm (8)",
  "",
);
process.stdout.write(out.join("\n"));
