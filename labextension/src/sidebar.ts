// The "GPU cells" panel: composes the picker, workers, queues and usage, and polls the server for them.

import { Poll } from '@lumino/polling';
import { Message } from '@lumino/messaging';
import { Panel } from '@lumino/widgets';

import { JobList } from './batch';
import { GpuCellAPIError, requestAPI } from './handler';
import { KernelDefaultBridge } from './kernel';
import { ICatalog, IJobList, IReleaseResult, IStatus } from './types';
import { BrokerBanner, HardwarePicker, QueueList, UsageView, WorkerList } from './widgets';

/** Where the pick survives page reloads; per browser, so a workspace reset does not forget it. */
export const PICK_STORAGE_KEY = 'gpucell:hardware';

const POLL_INTERVAL_MS = 2000;
const POLL_MAX_MS = 30000;

export class GpuCellSidebar extends Panel {
  constructor(bridge: KernelDefaultBridge) {
    super();
    this.id = 'gpucell-sidebar';
    this.addClass('jp-GpuCell');
    this.node.dataset.testid = 'gpucell-sidebar';

    this._banner = new BrokerBanner();
    this._picker = new HardwarePicker();
    this._workers = new WorkerList();
    this._queues = new QueueList();
    this._usage = new UsageView();
    this._jobs = new JobList();
    for (const part of [
      this._banner,
      this._picker,
      this._workers,
      this._queues,
      this._usage,
      this._jobs
    ]) {
      this.addWidget(part);
    }

    const saved = window.localStorage.getItem(PICK_STORAGE_KEY) ?? '';
    this._picker.selected = saved;
    if (saved) {
      void bridge.setHardware(saved);
    }
    this._picker.picked.connect((_, label) => {
      window.localStorage.setItem(PICK_STORAGE_KEY, label);
      void bridge.setHardware(label);
    });
    this._picker.showKernelDefault(bridge.current);
    bridge.changed.connect((_, report) => this._picker.showKernelDefault(report));
    this._workers.releaseRequested.connect((_, id) => void this._release(id));

    this._poll = new Poll({
      auto: false,
      factory: () => this._refresh(),
      frequency: { interval: POLL_INTERVAL_MS, backoff: true, max: POLL_MAX_MS },
      // Nobody looks at a hidden panel or a background tab: stop asking the broker.
      standby: () => !this.isVisible || 'when-hidden',
      name: 'gpucell:status'
    });
  }

  /** Fetch catalog and status now instead of at the next tick. */
  refresh(): Promise<void> {
    return this._poll.refresh();
  }

  /** The label the user picked ('' when none); what a new batch job defaults to. */
  get pickedHardware(): string {
    return this._picker.selected;
  }

  /** After a submit: poll now and scroll the Jobs section into view. */
  showJobs(): void {
    void this._poll.refresh().then(() => this._jobs.node.scrollIntoView({ block: 'nearest' }));
  }

  dispose(): void {
    if (this.isDisposed) {
      return;
    }
    this._poll.dispose();
    window.clearInterval(this._ticker);
    super.dispose();
  }

  protected onAfterShow(msg: Message): void {
    super.onAfterShow(msg);
    if (this._poll.state.phase === 'constructed') {
      void this._poll.start();
    } else {
      void this._poll.refresh();
    }
    window.clearInterval(this._ticker);
    this._ticker = window.setInterval(() => {
      this._workers.tick();
      this._jobs.tick();
    }, 1000);
  }

  protected onAfterHide(msg: Message): void {
    super.onAfterHide(msg);
    window.clearInterval(this._ticker);
  }

  private async _refresh(): Promise<void> {
    try {
      const [catalog, status, jobs] = await Promise.all([
        requestAPI<ICatalog>('catalog'),
        requestAPI<IStatus>('status'),
        // A failing job list (a broker without the Jobs service) must not blank the rest of the panel.
        requestAPI<IJobList>('jobs').catch((error: unknown) =>
          error instanceof GpuCellAPIError && error.brokerUnreachable
            ? Promise.reject(error)
            : String(error instanceof Error ? error.message : error)
        )
      ]);
      this._banner.showConnected(status.broker);
      this._picker.render(catalog);
      if (!this._picker.selected && catalog.default_hardware) {
        // Shows the broker's default without sending it: only a user's pick changes kernels.
        this._picker.selected = catalog.default_hardware;
      }
      this._workers.render(status, Date.now());
      this._queues.render(status);
      this._usage.render(status);
      if (typeof jobs === 'string') {
        this._jobs.showError(`Jobs unavailable: ${jobs}`);
      } else {
        this._jobs.render(jobs, Date.now());
      }
      this.toggleClass('jp-mod-unreachable', false);
    } catch (error) {
      const message =
        error instanceof GpuCellAPIError ? error.message : `gpucell: ${String(error)}`;
      this._banner.showUnreachable(message);
      this.toggleClass('jp-mod-unreachable', true);
      // Rethrow so that Poll backs off instead of hammering a dead broker.
      throw error;
    }
  }

  private async _release(workerId: string): Promise<void> {
    try {
      await requestAPI<IReleaseResult>('release', {
        method: 'POST',
        body: JSON.stringify({ worker_id: workerId })
      });
    } catch (error) {
      this._banner.showUnreachable(
        error instanceof GpuCellAPIError ? error.message : String(error)
      );
    }
    await this._poll.refresh();
  }

  private _banner: BrokerBanner;
  private _picker: HardwarePicker;
  private _workers: WorkerList;
  private _queues: QueueList;
  private _usage: UsageView;
  private _jobs: JobList;
  private _poll: Poll;
  private _ticker = 0;
}
