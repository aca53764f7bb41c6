// Container inspect → backends (docs/config.md §6): pure table tests of src/docker/labels.ts.
import { describe, expect, test } from "bun:test";
import fc from "fast-check";
import { seeds } from "./support/seed.ts";
import { backendKey, nameProblem, parseKeyPath } from "../src/config/keys.ts";
import { parseBackend } from "../src/config/values.ts";
import { backendJson, containerBackends, desiredKeys, type BackendOptions, type ContainerInspect } from "../src/docker/labels.ts";

const ID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

interface Spec {
  labels?: Record<string, string>;
  exposed?: string[];
  networks?: Record<string, { IPAddress?: string; GlobalIPv6Address?: string }>;
  ports?: Record<string, { HostIp: string; HostPort: string }[]>;
  state?: ContainerInspect["State"];
}

function container(s: Spec): ContainerInspect {
  return {
    Id: ID,
    Name: "/web1",
    Config: {
      Labels: s.labels ?? {},
      ExposedPorts: Object.fromEntries((s.exposed ?? []).map((p) => [p, {}])),
    },
    State: s.state ?? { Status: "running", Running: true, Paused: false },
    NetworkSettings: {
      Networks: s.networks ?? { bridge: { IPAddress: "198.51.100.2", GlobalIPv6Address: "" } },
      Ports: s.ports ?? {},
    },
  };
}

const S = "net.qmsk.clusterf.service";
const B = "net.qmsk.clusterf.backend";

function run(s: Spec, opts?: BackendOptions) {
  const r = containerBackends(container(s), opts);
  return { backends: Object.fromEntries(r.backends), warnings: r.warnings };
}

describe("label forms", () => {
  test.each<[string, Spec, Record<string, object>]>([
    ["generic tcp", { labels: { [S]: "web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] }, { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } }],
    ["generic udp", { labels: { [S]: "dns", [`${B}.udp`]: "53" }, exposed: ["53/udp"] }, { dns: { ipv4: "198.51.100.2", udp: 53, weight: 10 } }],
    [
      "tcp and udp",
      { labels: { [S]: "dns", [`${B}.tcp`]: "53", [`${B}.udp`]: "53" }, exposed: ["53/tcp", "53/udp"] },
      { dns: { ipv4: "198.51.100.2", tcp: 53, udp: 53, weight: 10 } },
    ],
    ["per-service tcp", { labels: { [S]: "web", [`${B}:web.tcp`]: "8080" }, exposed: ["8080/tcp"] }, { web: { ipv4: "198.51.100.2", tcp: 8080, weight: 10 } }],
    [
      "per-service tcp wins over the generic one",
      { labels: { [S]: "web", [`${B}.tcp`]: "80", [`${B}:web.tcp`]: "8080" }, exposed: ["80/tcp", "8080/tcp"] },
      { web: { ipv4: "198.51.100.2", tcp: 8080, weight: 10 } },
    ],
    ["generic weight", { labels: { [S]: "web", [`${B}.tcp`]: "80", [`${B}.weight`]: "3" }, exposed: ["80/tcp"] }, { web: { ipv4: "198.51.100.2", tcp: 80, weight: 3 } }],
    [
      "per-service weight wins",
      { labels: { [S]: "web", [`${B}.tcp`]: "80", [`${B}.weight`]: "3", [`${B}:web.weight`]: "7" }, exposed: ["80/tcp"] },
      { web: { ipv4: "198.51.100.2", tcp: 80, weight: 7 } },
    ],
    ["weight 0 label", { labels: { [S]: "web", [`${B}.tcp`]: "80", [`${B}.weight`]: "0" }, exposed: ["80/tcp"] }, { web: { ipv4: "198.51.100.2", tcp: 80, weight: 0 } }],
    [
      "several services, per-service ports and weights",
      {
        labels: { [S]: "web  api\tadmin", [`${B}.tcp`]: "80", [`${B}:api.tcp`]: "81", [`${B}:api.weight`]: "5", [`${B}:admin.udp`]: "9000" },
        exposed: ["80/tcp", "81/tcp", "9000/udp"],
      },
      {
        web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 },
        api: { ipv4: "198.51.100.2", tcp: 81, weight: 5 },
        admin: { ipv4: "198.51.100.2", tcp: 80, udp: 9000, weight: 10 },
      },
    ],
    ["a service listed twice is one backend", { labels: { [S]: "web web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] }, { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } }],
    [
      "IPv4 and IPv6",
      { labels: { [S]: "web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"], networks: { v6: { IPAddress: "203.0.113.2", GlobalIPv6Address: "2001:DB8:1::2" } } },
      { web: { ipv4: "203.0.113.2", ipv6: "2001:db8:1::2", tcp: 80, weight: 10 } },
    ],
    [
      "IPv6 only",
      { labels: { [S]: "web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"], networks: { v6: { IPAddress: "", GlobalIPv6Address: "2001:db8:1::2" } } },
      { web: { ipv6: "2001:db8:1::2", tcp: 80, weight: 10 } },
    ],
    ["port label with spaces", { labels: { [S]: "web", [`${B}.tcp`]: " 80 " }, exposed: ["80/tcp"] }, { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } }],
  ])("%s", (_name, spec, want) => {
    const r = run(spec);
    expect(r.backends).toEqual(want);
    expect(r.warnings).toEqual([]);
  });
});

describe("bad labels: a warning naming the container and the label; the rest still published", () => {
  test.each<[string, Spec, Record<string, object>, RegExp[]]>([
    [
      "port not exposed",
      { labels: { [S]: "web api", [`${B}:web.tcp`]: "8080", [`${B}:api.tcp`]: "81" }, exposed: ["81/tcp"] },
      { api: { ipv4: "198.51.100.2", tcp: 81, weight: 10 } },
      [/container 0123456789ab \(web1\): label net\.qmsk\.clusterf\.backend:web\.tcp=8080: port 8080\/tcp is not exposed/],
    ],
    [
      "exposed as udp, labelled as tcp",
      { labels: { [S]: "dns", [`${B}.tcp`]: "53" }, exposed: ["53/udp"] },
      {},
      [/label net\.qmsk\.clusterf\.backend\.tcp=53: port 53\/tcp is not exposed/],
    ],
    [
      "non-numeric port",
      { labels: { [S]: "web api", [`${B}:web.tcp`]: "http", [`${B}:api.tcp`]: "81" }, exposed: ["81/tcp"] },
      { api: { ipv4: "198.51.100.2", tcp: 81, weight: 10 } },
      [/container 0123456789ab \(web1\): label net\.qmsk\.clusterf\.backend:web\.tcp="http": not a port number/],
    ],
    ["port 0", { labels: { [S]: "web", [`${B}.tcp`]: "0" }, exposed: ["0/tcp"] }, {}, [/backend\.tcp="0": not a port number/]],
    ["port 65536", { labels: { [S]: "web", [`${B}.tcp`]: "65536" }, exposed: [] }, {}, [/not a port number/]],
    ["port 80/tcp", { labels: { [S]: "web", [`${B}.tcp`]: "80/tcp" }, exposed: ["80/tcp"] }, {}, [/not a port number/]],
    [
      "bad udp, good tcp: tcp kept",
      { labels: { [S]: "dns", [`${B}.tcp`]: "53", [`${B}.udp`]: "x" }, exposed: ["53/tcp", "53/udp"] },
      { dns: { ipv4: "198.51.100.2", tcp: 53, weight: 10 } },
      [/backend\.udp="x": not a port number/],
    ],
    [
      "service name with a slash",
      { labels: { [S]: "web a/b", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] },
      { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } },
      [/container 0123456789ab \(web1\): label net\.qmsk\.clusterf\.service: service name "a\/b" is not a valid key name/],
    ],
    [
      "service names . and ..",
      { labels: { [S]: ". .. web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] },
      { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } },
      [/service name "\."/, /service name "\.\."/],
    ],
    [
      "a service name over 255 characters",
      { labels: { [S]: `web ${"x".repeat(256)}`, [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] },
      { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } },
      [/service name "x{256}" is not a valid key name/],
    ],
    [
      "bad weight: default weight",
      { labels: { [S]: "web", [`${B}.tcp`]: "80", [`${B}:web.weight`]: "heavy" }, exposed: ["80/tcp"] },
      { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } },
      [/label net\.qmsk\.clusterf\.backend:web\.weight="heavy": not a weight/],
    ],
    ["negative weight", { labels: { [S]: "web", [`${B}.tcp`]: "80", [`${B}.weight`]: "-1" }, exposed: ["80/tcp"] }, { web: { ipv4: "198.51.100.2", tcp: 80, weight: 10 } }, [/not a weight/]],
    ["no port label", { labels: { [S]: "web" }, exposed: ["80/tcp"] }, {}, [/service web: no port label/]],
    [
      "no address",
      { labels: { [S]: "web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"], networks: { none: { IPAddress: "", GlobalIPv6Address: "" } } },
      {},
      [/no IP address on network none/],
    ],
    ["no network", { labels: { [S]: "web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"], networks: {} }, {}, [/on no network/]],
  ])("%s", (_name, spec, want, warnings) => {
    const r = run(spec);
    expect(r.backends).toEqual(want);
    expect(r.warnings).toHaveLength(warnings.length);
    warnings.forEach((re, i) => expect(r.warnings[i]).toMatch(re));
  });

  test("a whitespace-only service label is no service, with no warning", () => {
    expect(run({ labels: { [S]: "  ", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] })).toEqual({ backends: {}, warnings: [] });
  });

  test("an unlabelled container is ignored", () => {
    expect(run({ labels: { [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] })).toEqual({ backends: {}, warnings: [] });
  });
});

describe("networks", () => {
  const two = { front: { IPAddress: "203.0.113.2", GlobalIPv6Address: "2001:db8:1::2" }, back: { IPAddress: "203.0.113.18", GlobalIPv6Address: "" } };
  const labels = { [S]: "web", [`${B}.tcp`]: "80" };

  test("-docker-network picks one", () => {
    expect(run({ labels, exposed: ["80/tcp"], networks: two }, { network: "front" })).toEqual({
      backends: { web: { ipv4: "203.0.113.2", ipv6: "2001:db8:1::2", tcp: 80, weight: 10 } },
      warnings: [],
    });
    expect(run({ labels, exposed: ["80/tcp"], networks: two }, { network: "back" }).backends).toEqual({ web: { ipv4: "203.0.113.18", tcp: 80, weight: 10 } });
  });

  test("several networks and no flag: the first by name, with a warning", () => {
    const r = run({ labels, exposed: ["80/tcp"], networks: two });
    expect(r.backends).toEqual({ web: { ipv4: "203.0.113.18", tcp: 80, weight: 10 } });
    expect(r.warnings).toEqual([expect.stringMatching(/on several networks \(back, front\); publishing its address on back; choose with -docker-network/)]);
  });

  test("not on the -docker-network: not published, warned", () => {
    const r = run({ labels, exposed: ["80/tcp"] }, { network: "front" });
    expect(r.backends).toEqual({});
    expect(r.warnings).toEqual([expect.stringMatching(/not on the network "front" \(-docker-network\); on bridge/)]);
  });
});

describe("published mode (-backend-published)", () => {
  const labels = { [S]: "web dns", [`${B}:web.tcp`]: "80", [`${B}:dns.udp`]: "53" };
  const exposed = ["80/tcp", "53/udp"];
  const ports = {
    "80/tcp": [
      { HostIp: "0.0.0.0", HostPort: "32768" },
      { HostIp: "::", HostPort: "32768" },
    ],
    "53/udp": [{ HostIp: "192.0.2.10", HostPort: "5353" }],
  };

  test("host address and host port", () => {
    const r = run({ labels, exposed, ports }, { published: { ipv4: "192.0.2.10" } });
    expect(r.backends).toEqual({ web: { ipv4: "192.0.2.10", tcp: 32768, weight: 10 }, dns: { ipv4: "192.0.2.10", udp: 5353, weight: 10 } });
    expect(r.warnings).toEqual([]);
  });

  test("IPv4 and IPv6 host addresses", () => {
    const r = run({ labels, exposed, ports }, { published: { ipv4: "192.0.2.10", ipv6: "2001:db8::10" } });
    expect(r.backends.web).toEqual({ ipv4: "192.0.2.10", ipv6: "2001:db8::10", tcp: 32768, weight: 10 });
    // 53/udp is bound to the IPv4 address only.
    expect(r.backends.dns).toEqual({ ipv4: "192.0.2.10", udp: 5353, weight: 10 });
  });

  test("bound to another address: not published there", () => {
    const r = run({ labels, exposed, ports }, { published: { ipv4: "192.0.2.99" } });
    expect(r.backends).toEqual({ web: { ipv4: "192.0.2.99", tcp: 32768, weight: 10 } });
    expect(r.warnings).toEqual([expect.stringMatching(/label net\.qmsk\.clusterf\.backend:dns\.udp=53: port 53\/udp is not published on the host address 192\.0\.2\.99/)]);
  });

  test("exposed but not published", () => {
    const r = run({ labels: { [S]: "web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] }, { published: { ipv4: "192.0.2.10" } });
    expect(r.backends).toEqual({});
    expect(r.warnings).toEqual([expect.stringMatching(/port 80\/tcp is not published/)]);
  });

  test("published but the label names another port", () => {
    const r = run({ labels: { [S]: "web", [`${B}.tcp`]: "8080" }, exposed: ["80/tcp"], ports }, { published: { ipv4: "192.0.2.10" } });
    expect(r.warnings).toEqual([expect.stringMatching(/port 8080\/tcp is not exposed/)]);
  });
});

describe("state → weight", () => {
  const labels = { [S]: "web", [`${B}.tcp`]: "80", [`${B}.weight`]: "7" };
  const exposed = ["80/tcp"];
  test.each<[string, ContainerInspect["State"], BackendOptions, number | undefined]>([
    ["running", { Running: true }, {}, 7],
    ["healthy", { Running: true, Health: { Status: "healthy" } }, {}, 7],
    ["unhealthy", { Running: true, Health: { Status: "unhealthy" } }, {}, 0],
    ["health check starting", { Running: true, Health: { Status: "starting" } }, {}, 0],
    ["paused", { Running: true, Paused: true }, {}, 0],
    ["being stopped (kill seen)", { Running: true }, { draining: true }, 0],
    ["exited", { Running: false, Status: "exited" }, {}, undefined],
    ["created", { Running: false, Status: "created" }, {}, undefined],
    ["restarting", { Running: true, Restarting: true }, {}, undefined],
  ])("%s", (_name, state, opts, weight) => {
    const r = run({ labels, exposed, state }, opts);
    if (weight === undefined) expect(r.backends).toEqual({});
    else expect(r.backends.web?.weight).toBe(weight);
  });
});

describe("keys and values", () => {
  test("key layout and JSON that parseBackend reads back", () => {
    const c = container({ labels: { [S]: "web", [`${B}.tcp`]: "80", [`${B}.udp`]: "53" }, exposed: ["80/tcp", "53/udp"], networks: { n: { IPAddress: "203.0.113.2", GlobalIPv6Address: "2001:db8:1::2" } } });
    const { keys } = desiredKeys([c], "/clusterf/");
    expect([...keys]).toEqual([[`/clusterf/services/web/backends/${ID}`, '{"ipv4":"203.0.113.2","ipv6":"2001:db8:1::2","tcp":80,"udp":53,"weight":10}']]);
    expect(parseBackend([...keys.values()][0]!)).toEqual({ value: { ipv4: "203.0.113.2", ipv6: "2001:db8:1::2", tcp: 80, udp: 53, weight: 10 }, warnings: [] });
  });

  test("desiredKeys passes the drain state per container", () => {
    const c = container({ labels: { [S]: "web", [`${B}.tcp`]: "80" }, exposed: ["80/tcp"] });
    const { keys } = desiredKeys([c], "/p", { isDraining: (id) => id === ID });
    expect([...keys.values()]).toEqual(['{"ipv4":"198.51.100.2","tcp":80,"weight":0}']);
  });

  for (const { seed, label } of seeds(20240611)) {
    test(`property (${label}): every valid service name makes a key clusterf-ipvs accepts, and every value parses`, () => {
      fc.assert(
        fc.property(
          fc.array(fc.string({ minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 4 }),
          fc.integer({ min: 1, max: 65535 }),
          fc.integer({ min: 0, max: 2147483647 }),
          (names, port, weight) => {
            const serviceLabel = names.join(" ");
            const c = container({ labels: { [S]: serviceLabel, [`${B}.tcp`]: String(port), [`${B}.weight`]: String(weight) }, exposed: [`${port}/tcp`] });
            const r = containerBackends(c);
            for (const [service, b] of r.backends) {
              expect(nameProblem(service)).toBeUndefined();
              expect(parseKeyPath(backendKey(service, ID))).toEqual({ kind: "backend", service, backend: ID });
              expect(parseBackend(backendJson(b)).value).toEqual({ ipv4: "198.51.100.2", tcp: port, weight });
            }
            // Every name is either published or warned about.
            const distinct = new Set(serviceLabel.split(/\s+/).filter(Boolean));
            expect(r.backends.size + r.warnings.length).toBe(distinct.size);
          },
        ),
        { seed, numRuns: 300 },
      );
    });
  }
});
