"""Packaging for morph_net."""
import pathlib

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent

setup(
    name='morph_net',
    version='0.1.0',
    description=('MorphNet-style resource-constrained structure learning for '
                 'TensorFlow 2 and Keras 3.'),
    long_description=(_HERE / 'README.md').read_text(encoding='utf-8'),
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['morph_net', 'morph_net.*']),
    install_requires=[
        'tensorflow>=2.16',
        'numpy',
        'scipy',
    ],
    entry_points={
        'console_scripts': ['morphnet=morph_net.cli:main'],
    },
    extras_require={
        'test': ['pytest', 'pytest-xdist', 'tf_keras', 'tf-slim', 'mlxtend',
                 'matplotlib', 'keras-hub'],
        # TF1 programs: tf_slim layers and arg_scopes (configurable_ops).
        'tf1': ['tf_keras', 'tf-slim'],
        'examples': ['mlxtend', 'matplotlib'],
    },
    classifiers=[
        'License :: OSI Approved :: Apache Software License',
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
)
