"""Packaging for mlcycle. All settings live in settings.ini (nbdev 2 layout); edit there, not here."""
import shlex, shutil
from configparser import ConfigParser
from pathlib import Path

import setuptools
from setuptools.command.build_py import build_py

here = Path(__file__).parent
config = ConfigParser(delimiters=['='])
config.read(here/'settings.ini', encoding='utf-8')
cfg = config['DEFAULT']

cfg_keys = 'version description keywords author author_email'.split()
expected = cfg_keys + "lib_name user branch license status min_python audience language".split()
for o in expected: assert o in cfg, f"missing expected setting: {o}"
setup_cfg = {o: cfg[o] for o in cfg_keys}

licenses = {'apache2': ('Apache Software License 2.0', 'OSI Approved :: Apache Software License')}
statuses = ['1 - Planning', '2 - Pre-Alpha', '3 - Alpha', '4 - Beta', '5 - Production/Stable', '6 - Mature', '7 - Inactive']
lic = licenses.get(cfg['license'].lower(), (cfg['license'], None))
requirements = shlex.split(cfg.get('requirements', ''))
dev_requirements = shlex.split(cfg.get('dev_requirements', ''))
spark_requirements = shlex.split(cfg.get('spark_requirements', ''))   # `pip install mlcycle[spark]`: mlcycle predict --engine spark
boosting_requirements = shlex.split(cfg.get('boosting_requirements', ''))   # `pip install mlcycle[boosting]`: LightGBM and XGBoost candidates


class build_py_with_notebooks(build_py):
    """Ship the stage notebooks inside the package so `mlcycle run` works from a wheel, with no clone around."""
    def run(self):
        super().run()
        dest = Path(self.build_lib)/cfg['lib_name']/'notebooks'
        dest.mkdir(parents=True, exist_ok=True)
        for nb in sorted((here/cfg['nbs_path']).glob('[0-9][0-9]_*.ipynb')): shutil.copy2(nb, dest/nb.name)


setuptools.setup(
    name=cfg['lib_name'],
    license=lic[0],
    classifiers=['Development Status :: ' + statuses[int(cfg['status'])],
                 'Intended Audience :: ' + cfg['audience'].title(),
                 'Natural Language :: ' + cfg['language'].title(),
                 'Programming Language :: Python :: 3.11',
                 'Programming Language :: Python :: 3.12'] + (['License :: ' + lic[1]] if lic[1] else []),
    url=cfg['git_url'],
    packages=setuptools.find_packages(include=[cfg['lib_name'], cfg['lib_name'] + '.*']),
    package_data={cfg['lib_name']: cfg.get('package_data', '').split()},
    include_package_data=True,
    install_requires=requirements,
    extras_require={'dev': dev_requirements, 'spark': spark_requirements, 'boosting': boosting_requirements},
    python_requires='>=' + cfg['min_python'],
    long_description=(here/'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    zip_safe=False,
    cmdclass={'build_py': build_py_with_notebooks},
    entry_points={'console_scripts': cfg.get('console_scripts', '').split(),
                  'nbdev': [f'{cfg.get("lib_path")}={cfg.get("lib_path")}._modidx:d']},
    **setup_cfg)
