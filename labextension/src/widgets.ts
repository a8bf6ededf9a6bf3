// The sidebar's parts: each renders one slice of the server's JSON into plain DOM with stable test ids.

import { Widget } from '@lumino/widgets';
import { ISignal, Signal } from '@lumino/signaling';

import { ICatalog, IStatus, IWorker } from './types';
import { IKernelDefault } from './kernel';

/** Create an element with a class, optional test id and text. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text?: string,
  testId?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  node.className = className;
  if (text !== undefined) {
    node.textContent = text;
  }
  if (testId) {
    node.dataset.testid = testId;
  }
  return node;
}

export function formatMoney(value: number): string {
  return `$${value.toFixed(value < 1 ? 4 : 2)}`;
}

/** Prices per hour read like a price list; accrued costs keep small amounts visible. */
export function formatPrice(value: number): string {
  return `$${value.toFixed(2)}`;
}

export function formatSeconds(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) {
    return `${s}s`;
  }
  const m = Math.floor(s / 60);
  return s < 3600 ? `${m}m ${s % 60}s` : `${Math.floor(m / 60)}h ${m % 60}m`;
}

/** A titled section of the panel. */
export class Section extends Widget {
  constructor(title: string, testId: string) {
    super();
    this.addClass('jp-GpuCell-section');
    this.node.dataset.testid = testId;
    this.node.appendChild(el('h3', 'jp-GpuCell-sectionTitle', title));
    this.body = el('div', 'jp-GpuCell-sectionBody');
    this.node.appendChild(this.body);
  }

  protected readonly body: HTMLDivElement;
}

/** The catalog as radio buttons: label, price per hour, warm and available workers. */
export class HardwarePicker extends Section {
  constructor() {
    super('Hardware', 'gpucell-picker');
    this._list = el('div', 'jp-GpuCell-pickerList');
    this._note = el('div', 'jp-GpuCell-kernelDefault', '', 'gpucell-kernel-default');
    this.body.append(this._list, this._note);
  }

  /** Fired with the label the user picked. */
  get picked(): ISignal<this, string> {
    return this._picked;
  }

  set selected(label: string) {
    this._selected = label;
    for (const input of Array.from(this._list.querySelectorAll('input'))) {
      input.checked = input.value === label;
    }
  }

  get selected(): string {
    return this._selected;
  }

  render(catalog: ICatalog): void {
    this._list.replaceChildren();
    for (const entry of catalog.entries) {
      const row = el('label', 'jp-GpuCell-hardware', undefined, `gpucell-hw-${entry.label}`);
      row.dataset.label = entry.label;
      const input = document.createElement('input');
      input.type = 'radio';
      input.name = 'gpucell-hardware';
      input.value = entry.label;
      input.checked = entry.label === this._selected;
      input.addEventListener('change', () => {
        if (input.checked) {
          this._selected = entry.label;
          this._picked.emit(entry.label);
        }
      });
      const name = el('span', 'jp-GpuCell-hardwareLabel', entry.label);
      const served =
        entry.served_by && entry.served_by !== entry.label
          ? ` on ${entry.served_by}`
          : entry.simulate
            ? ' (simulated)'
            : '';
      const price = el(
        'span',
        'jp-GpuCell-price',
        `${formatPrice(entry.price_per_hour)}/h${served}`
      );
      const counts = el(
        'span',
        'jp-GpuCell-counts',
        `${entry.warm} warm · ${entry.available} available`,
        `gpucell-hw-counts-${entry.label}`
      );
      row.append(input, name, price, counts);
      this._list.appendChild(row);
    }
  }

  showKernelDefault(report: IKernelDefault): void {
    if (!report.notebook) {
      this._note.textContent = 'Open a notebook to set its default hardware.';
    } else if (report.error) {
      this._note.textContent = `${report.notebook}: ${report.error}`;
    } else if (report.hardware) {
      this._note.textContent = `Bare %%gpu in ${report.notebook} runs on ${report.hardware}`;
    } else {
      this._note.textContent = `Run %load_ext gpucell in ${report.notebook} to use the pick there.`;
    }
  }

  private _list: HTMLDivElement;
  private _note: HTMLDivElement;
  private _selected = '';
  private _picked = new Signal<this, string>(this);
}

/** Live workers with idle countdowns and a Release button. */
export class WorkerList extends Section {
  constructor() {
    super('Workers', 'gpucell-workers');
  }

  /** Fired with a worker id when its Release button is pressed. */
  get releaseRequested(): ISignal<this, string> {
    return this._releaseRequested;
  }

  render(status: IStatus, fetchedAt: number): void {
    this._fetchedAt = fetchedAt;
    const workers: IWorker[] = [];
    for (const pool of Object.values(status.pools)) {
      workers.push(...pool.workers);
    }
    this.body.replaceChildren();
    if (workers.length === 0) {
      this.body.appendChild(
        el('div', 'jp-GpuCell-empty', 'No workers: every pool is at zero.', 'gpucell-no-workers')
      );
      return;
    }
    for (const worker of workers) {
      const row = el(
        'div',
        `jp-GpuCell-worker jp-mod-${worker.state}`,
        undefined,
        'gpucell-worker'
      );
      row.dataset.workerId = worker.id;
      row.dataset.state = worker.state;
      row.dataset.hardware = worker.hardware;
      const head = el('div', 'jp-GpuCell-workerHead');
      head.append(
        el('span', 'jp-GpuCell-workerLabel', worker.hardware, 'gpucell-worker-label'),
        el('span', `jp-GpuCell-state jp-mod-${worker.state}`, worker.state, 'gpucell-worker-state')
      );
      const release = el(
        'button',
        'jp-GpuCell-release jp-mod-styled',
        'Release',
        'gpucell-release'
      );
      release.title = `Release worker ${worker.id} now`;
      release.disabled = worker.state === 'releasing';
      release.addEventListener('click', () => {
        release.disabled = true;
        this._releaseRequested.emit(worker.id);
      });
      head.appendChild(release);
      const notebook =
        worker.session_name || (worker.session ? worker.session : 'warm, unassigned');
      const detail = el('div', 'jp-GpuCell-workerDetail');
      detail.append(
        el('span', 'jp-GpuCell-notebook', notebook, 'gpucell-worker-notebook'),
        el('span', 'jp-GpuCell-idle', '', 'gpucell-worker-idle')
      );
      for (const gpu of worker.gpus ?? []) {
        const gib = (bytes: number): string => (bytes / 2 ** 30).toFixed(1);
        detail.appendChild(
          el(
            'span',
            'jp-GpuCell-gpu',
            `${gpu.name}: ${gpu.utilization}% · ${gib(gpu.memory_used)}/${gib(gpu.memory_total)} GiB`,
            'gpucell-worker-gpu'
          )
        );
      }
      row.dataset.idleS = String(worker.idle_s);
      row.dataset.releaseInS = String(worker.release_in_s);
      row.append(head, detail);
      this.body.appendChild(row);
    }
    this.tick();
  }

  /** Advance idle times and countdowns between polls. */
  tick(): void {
    const elapsed = (Date.now() - this._fetchedAt) / 1000;
    for (const row of Array.from(this.body.querySelectorAll<HTMLElement>('.jp-GpuCell-worker'))) {
      const idle = row.querySelector<HTMLElement>('.jp-GpuCell-idle');
      if (!idle) {
        continue;
      }
      if (row.dataset.state !== 'idle') {
        idle.textContent = '';
        continue;
      }
      const idleS = Number(row.dataset.idleS) + elapsed;
      const releaseIn = Number(row.dataset.releaseInS);
      idle.textContent =
        releaseIn >= 0
          ? `idle ${formatSeconds(idleS)} · released in ${formatSeconds(releaseIn - elapsed)}`
          : `idle ${formatSeconds(idleS)}`;
    }
  }

  private _fetchedAt = Date.now();
  private _releaseRequested = new Signal<this, string>(this);
}

/** Each pool's queue length and size. */
export class QueueList extends Section {
  constructor() {
    super('Queues', 'gpucell-queues');
  }

  render(status: IStatus): void {
    this.body.replaceChildren();
    for (const [label, pool] of Object.entries(status.pools)) {
      const row = el('div', 'jp-GpuCell-queue', undefined, `gpucell-queue-${label}`);
      row.append(
        el('span', 'jp-GpuCell-hardwareLabel', label),
        el(
          'span',
          'jp-GpuCell-counts',
          `${pool.queued} queued · ${pool.workers.length}/${pool.max_workers} workers`
        )
      );
      this.body.appendChild(row);
    }
  }
}

/** Cost so far per notebook and in total, from the broker's metering. */
export class UsageView extends Section {
  constructor() {
    super('Usage', 'gpucell-usage');
  }

  render(status: IStatus): void {
    this.body.replaceChildren();
    const table = el('table', 'jp-GpuCell-usageTable');
    for (const row of status.usage.by_notebook) {
      const tr = el('tr', 'jp-GpuCell-usageRow', undefined, 'gpucell-usage-row');
      tr.append(
        el('td', 'jp-GpuCell-notebook', row.notebook || '(unnamed session)'),
        el('td', 'jp-GpuCell-seconds', formatSeconds(row.worker_seconds)),
        el('td', 'jp-GpuCell-cost', formatMoney(row.cost))
      );
      table.appendChild(tr);
    }
    const total = el('tr', 'jp-GpuCell-usageTotal');
    total.append(
      el('td', 'jp-GpuCell-notebook', 'Total'),
      el('td', 'jp-GpuCell-seconds', ''),
      el('td', 'jp-GpuCell-cost', formatMoney(status.usage.total_cost), 'gpucell-usage-total')
    );
    table.appendChild(total);
    this.body.appendChild(table);
  }
}

/** One line at the top: which broker, or why it cannot be reached. */
export class BrokerBanner extends Widget {
  constructor() {
    super();
    this.addClass('jp-GpuCell-banner');
    this.node.dataset.testid = 'gpucell-broker';
    this.showConnecting();
  }

  showConnecting(): void {
    this._set('jp-mod-connecting', 'Connecting to the gpucell broker…');
  }

  showConnected(address: string): void {
    this._set('jp-mod-ok', `Broker ${address}`);
  }

  /** A headline the user can read at a glance, the server's exact reason under it. */
  showUnreachable(message: string): void {
    this._set('jp-mod-unreachable', 'Broker unreachable', `${message} — retrying.`);
  }

  get unreachable(): boolean {
    return this.hasClass('jp-mod-unreachable');
  }

  private _set(mod: string, headline: string, detail = ''): void {
    for (const m of ['jp-mod-connecting', 'jp-mod-ok', 'jp-mod-unreachable']) {
      this.toggleClass(m, m === mod);
    }
    this.node.dataset.state = mod.replace('jp-mod-', '');
    this.node.replaceChildren(el('div', 'jp-GpuCell-bannerHeadline', headline));
    if (detail) {
      this.node.appendChild(el('div', 'jp-GpuCell-bannerDetail', detail, 'gpucell-broker-detail'));
    }
  }
}
