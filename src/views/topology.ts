/**
 * The topology map: packages → NUMA nodes → L3 (chiplet) domains → cores → CPUs.
 *
 * Each CPU cell is coloured by its live load; CPUs a cluster's worker owns carry that cluster's
 * colour as a frame and its worker's name in the tooltip.  A CPU owned by workers of two
 * clusters is marked crowded (hatched); workers without a CPU set are listed as unpinned.
 */
import { ITopology } from '../tokens';
import { clusterColour, h, parseCpuList } from './dom';

function loadColour(percent: number): string {
  const p = Math.max(0, Math.min(100, percent));
  // green (idle) → yellow → red (busy)
  return `hsl(${Math.round(120 - 1.2 * p)}, 70%, ${Math.round(88 - 0.3 * p)}%)`;
}

function cpuCell(cpu: number, topo: ITopology, allowed: Set<number>): HTMLElement {
  const load = topo.load[String(cpu)] ?? 0;
  const owners = topo.owners[String(cpu)] ?? [];
  const crowded = topo.crowded.includes(cpu);
  const classes = ['ctrlstack-cpu'];
  if (owners.length) {
    classes.push('ctrlstack-mod-owned');
  }
  if (crowded) {
    classes.push('ctrlstack-mod-crowded');
  }
  if (!allowed.has(cpu)) {
    classes.push('ctrlstack-mod-disallowed');
  }
  const who = owners.map(o => `${o.cluster}/${o.worker}`).join(', ');
  const title =
    `CPU ${cpu}: ${load.toFixed(0)}% busy` +
    (who ? `; worker ${who}` : '') +
    (crowded ? ' (crowded: shared by clusters)' : '');
  const cell = h(
    'div',
    {
      className: classes.join(' '),
      'data-cpu': cpu,
      'data-owner': owners.length ? owners[0].cluster : null,
      'data-worker': owners.length ? owners[0].worker : null,
      title
    },
    String(cpu)
  );
  cell.style.backgroundColor = loadColour(load);
  if (owners.length) {
    cell.style.outlineColor = clusterColour(owners[0].cluster);
  }
  return cell;
}

export function renderTopology(topo: ITopology): HTMLElement {
  const m = topo.machine;
  const allowed = new Set(parseCpuList(m.allowed));
  const cores = m.cores.map(parseCpuList);
  const root = h('div', { className: 'ctrlstack-map', 'data-cpus': m.cpus });
  for (const [pkg, pkgCpus] of Object.entries(m.packages)) {
    const inPkg = new Set(parseCpuList(pkgCpus));
    const pkgBox = h('div', { className: 'ctrlstack-package' }, h('div', { className: 'ctrlstack-label' }, `package ${pkg}`));
    const numaIds = Object.entries(m.numa_nodes).filter(([, cpus]) =>
      parseCpuList(cpus).some(c => inPkg.has(c))
    );
    const groups: [string, number | null][] = numaIds.length
      ? numaIds.map(([id]) => [`NUMA ${id}`, Number(id)])
      : [['memory', null]];
    for (const [label, numa] of groups) {
      const numaBox = h('div', { className: 'ctrlstack-numa' }, h('div', { className: 'ctrlstack-label' }, label));
      const leaves = m.leaves.filter(l => l.package === Number(pkg) && l.numa === numa);
      for (const leaf of leaves) {
        const leafCpus = new Set(parseCpuList(leaf.cpus));
        const l3Box = h(
          'div',
          { className: 'ctrlstack-l3' },
          h('div', { className: 'ctrlstack-label' }, leaf.l3 === null ? 'no L3' : `L3 ${leaf.l3}`)
        );
        const row = h('div', { className: 'ctrlstack-cores' });
        for (const core of cores.filter(c => c.length && leafCpus.has(c[0]))) {
          row.append(
            h('div', { className: 'ctrlstack-core' }, ...core.map(cpu => cpuCell(cpu, topo, allowed)))
          );
        }
        l3Box.append(row);
        numaBox.append(l3Box);
      }
      pkgBox.append(numaBox);
    }
    root.append(pkgBox);
  }
  const clusters = new Set<string>();
  for (const owners of Object.values(topo.owners)) {
    owners.forEach(o => clusters.add(o.cluster));
  }
  const legend = h('div', { className: 'ctrlstack-legend' });
  for (const name of [...clusters].sort()) {
    const swatch = h('span', { className: 'ctrlstack-swatch' });
    swatch.style.backgroundColor = clusterColour(name);
    legend.append(h('span', { className: 'ctrlstack-legend-item' }, swatch, name));
  }
  if (topo.crowded.length) {
    legend.append(
      h('span', { className: 'ctrlstack-warning' }, `crowded CPUs: ${topo.crowded.join(', ')}`)
    );
  }
  if (topo.unpinned.length) {
    legend.append(
      h(
        'span',
        { className: 'ctrlstack-warning ctrlstack-unpinned' },
        `unpinned: ${topo.unpinned.map(o => `${o.cluster}/${o.worker}`).join(', ')}`
      )
    );
  }
  root.append(legend);
  return root;
}
