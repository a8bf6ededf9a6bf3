// JupyterLab plugin: adds the "GPU cells" panel to the left sidebar and the "Run notebook as batch job" command.

import { ILabShell, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { INotebookTracker } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';

import { registerBatchCommand } from './batch';
import { KernelDefaultBridge } from './kernel';
import { GpuCellSidebar } from './sidebar';

const chipSvg = `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16">
<g class="jp-icon3" fill="#616161"><path d="M8 8h8v8H8z" opacity=".5"/>
<path d="M9 2h2v3H9zm4 0h2v3h-2zM9 19h2v3H9zm4 0h2v3h-2zM2 9h3v2H2zm0 4h3v2H2zm17-4h3v2h-3zm0 4h3v2h-3z"/>
<path d="M5 5h14v14H5zm2 2v10h10V7z"/></g></svg>`;

export const gpucellIcon = new LabIcon({ name: 'gpucell:chip', svgstr: chipSvg });

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'gpucell:sidebar',
  description: 'Pick hardware for %%gpu cells, watch workers, see what cells cost.',
  autoStart: true,
  requires: [ILabShell, INotebookTracker],
  optional: [ICommandPalette, IDefaultFileBrowser],
  activate: (
    app: JupyterFrontEnd,
    labShell: ILabShell,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    browser: IDefaultFileBrowser | null
  ): void => {
    const bridge = new KernelDefaultBridge(tracker);
    const sidebar = new GpuCellSidebar(bridge);
    sidebar.title.icon = gpucellIcon;
    sidebar.title.caption = 'GPU cells';
    labShell.add(sidebar, 'left', { rank: 600 });
    registerBatchCommand(app, {
      tracker,
      browser,
      palette,
      icon: gpucellIcon,
      pickedHardware: () => sidebar.pickedHardware,
      showJobs: () => {
        labShell.activateById(sidebar.id);
        sidebar.showJobs();
      }
    });
  }
};

export default plugin;
